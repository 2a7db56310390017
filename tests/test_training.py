"""swag.training: schedule, BN update, prior penalty, train/eval loops, checkpoints."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import write_legacy_checkpoint
from torch import nn
from torch.optim.swa_utils import update_bn as torch_update_bn

from swag import training
from swag.errors import UserError
from swag.io import atomic_torch_save


# Learning-rate schedule (docs/original_code.md), expected values worked out by hand:
# t = epoch / T;  factor = 1 (t ≤ 0.5), 1 − (1 − r)(t − 0.5)/0.4 (t ≤ 0.9), r after.
@pytest.mark.parametrize(
    "epoch, expected",
    [
        (0, 1.0),
        (80, 1.0),  # t = 80/161 = 0.4969
        (81, 1 - 0.9 * (81 / 161 - 0.5) / 0.4),  # t = 0.50311: 0.99301
        (113, 1 - 0.9 * (113 / 161 - 0.5) / 0.4),  # t = 0.70186: 0.54581
        (144, 1 - 0.9 * (144 / 161 - 0.5) / 0.4),  # t = 0.89441: 0.11258
        (145, 0.1),  # t = 0.90062
        (299, 0.1),
    ],
)
def test_schedule_preresnet20_swag_example(epoch, expected):
    """lr 0.1, swag_lr 0.01, swag_start 161: r = 0.1, T = 161 (the README's SWAG command)."""
    factor = training.learning_rate_factor(epoch, 300, swag=True, swag_start=161, swag_lr_ratio=0.1)
    assert factor == pytest.approx(expected, rel=1e-12)
    assert 0.1 * factor == pytest.approx(0.1 * expected)


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (0, 1.0),
        (150, 1.0),  # t = 0.5 exactly: still 1
        (151, 1 - 0.99 * (1 / 300) / 0.4),  # 0.99175
        (210, 0.505),  # t = 0.7: halfway from 1 to 0.01
        (270, 0.01),  # t = 0.9
        (299, 0.01),
    ],
)
def test_schedule_sgd_300_epochs(epoch, expected):
    """SGD, 300 epochs: r = 0.01 regardless of swag_lr, T = epochs."""
    factor = training.learning_rate_factor(epoch, 300, swag=False, swag_lr_ratio=0.5)
    assert factor == pytest.approx(expected, rel=1e-12)


def test_set_learning_rate_sets_every_group():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 3.0}], lr=1.0)
    training.set_learning_rate(optimizer, 0.25)
    assert [group["lr"] for group in optimizer.param_groups] == [0.25, 0.25]


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.BatchNorm2d(3),  # first: its statistics are those of the raw inputs
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    )


def batches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for size in sizes:
        x = 2.0 + 3.0 * torch.randn(size, 3, 6, 6, generator=generator)
        out.append((x, torch.zeros(size, dtype=torch.long)))
    return out


def bn_states(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (m.running_mean.clone(), m.running_var.clone())
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]


def test_update_bn_equals_torch_swa_utils_on_equal_batches():
    loader = batches([8, 8, 8, 8])
    ours, theirs = bn_net(), bn_net()
    ours.eval()
    training.update_bn(loader, ours, "cpu")
    torch_update_bn(loader, theirs)
    for (mean_a, var_a), (mean_b, var_b) in zip(bn_states(ours), bn_states(theirs), strict=True):
        torch.testing.assert_close(mean_a, mean_b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var_a, var_b, rtol=1e-5, atol=1e-6)
    assert ours.training  # left in train mode, as upstream
    assert all(m.momentum == 0.1 for m in ours.modules() if isinstance(m, nn.BatchNorm2d))


def test_update_bn_is_the_example_weighted_average_of_batch_statistics():
    """Unequal batches: running = Σ_b B_b·stat_b / Σ_b B_b (unbiased per-batch variance)."""
    sizes = [10, 3, 7]
    loader = batches(sizes, seed=1)
    model = bn_net()
    training.update_bn(loader, model, "cpu")
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x, _ in loader])
    variances = torch.stack([x.transpose(0, 1).reshape(3, -1).var(dim=1) for x, _ in loader])
    weights = torch.tensor(sizes, dtype=torch.float32)[:, None] / sum(sizes)
    first_mean, first_var = bn_states(model)[0]
    torch.testing.assert_close(first_mean, (weights * means).sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first_var, (weights * variances).sum(0), rtol=1e-5, atol=1e-5)
    # torch's batch-count average differs here, so this test tells the two apart.
    reference = bn_net()
    torch_update_bn(loader, reference)
    assert not torch.allclose(bn_states(reference)[0][0], first_mean, rtol=1e-4)


def test_update_bn_subset_of_a_plain_loader_uses_the_first_batches():
    loader = batches([5, 5, 5, 5], seed=2)
    model, reference = bn_net(), bn_net()
    training.update_bn(loader, model, "cpu", subset=10)
    training.update_bn(loader[:2], reference, "cpu")
    for (mean_a, var_a), (mean_b, var_b) in zip(
        bn_states(model), bn_states(reference), strict=True
    ):
        torch.testing.assert_close(mean_a, mean_b, rtol=0, atol=0)
        torch.testing.assert_close(var_a, var_b, rtol=0, atol=0)


def test_update_bn_without_batchnorm_leaves_the_model_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(108, 2)).eval()
    before = copy.deepcopy(model.state_dict())
    training.update_bn(batches([4]), model, "cpu")
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_gaussian_prior_penalty_value_and_gradient():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.bias.fill_(3.0)
    penalty = training.gaussian_prior_penalty(model, prior_var=0.1, num_train=50)
    # (1 + 4 + 9) / (2 · 0.1 · 50) = 14 / 10
    assert penalty.item() == pytest.approx(1.4, rel=1e-6)
    penalty.backward()
    # d/dp = p / (prior_var · N) = p / 5: weight decay 1/(prior_var·N) (docs/original_code.md).
    torch.testing.assert_close(model.weight.grad, torch.tensor([[0.2, -0.4]]))
    torch.testing.assert_close(model.bias.grad, torch.tensor([0.6]))


def blobs(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(num) % 3
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    return centres[targets] + torch.randn(num, 2, generator=generator), targets


def blob_loader(num: int = 96, batch: int = 16, seed: int = 0):
    x, y = blobs(num, seed)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, num, batch)]


def test_train_epoch_reports_cross_entropy_plus_prior_before_each_step():
    """With lr = 0 the weights stay put, so the mean loss is computable by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    loader = blob_loader(num=40, batch=16)  # batches 16, 16, 8: the mean weighs by examples
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = training.train_epoch(loader, model, optimizer, "cpu", prior_var=0.5, num_train=40)
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    with torch.no_grad():
        logits = model(x)
        squared = sum(float(p.pow(2).sum()) for p in model.parameters())
    expected = float(F.cross_entropy(logits, y)) + squared / (2 * 0.5 * 40)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_train_epoch_decreases_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = blob_loader()
    losses = [training.train_epoch(loader, model, optimizer, "cpu")["loss"] for _ in range(5)]
    assert losses[-1] < 0.5 * losses[0]
    x, y = blobs(300, seed=1)
    result = training.evaluate([(x, y)], model, "cpu")
    assert result["accuracy"] > 0.9


def test_train_epoch_nan_is_a_divergence_error():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(training.DivergenceError, match="NaN"):
        training.train_epoch(blob_loader(), model, optimizer, "cpu")
    assert issubclass(training.DivergenceError, UserError)


def test_evaluate_and_predict_match_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    x, y = blobs(50, seed=2)
    loader = [(x[:30], y[:30]), (x[30:], y[30:])]
    probs, targets = training.predict(loader, model, "cpu")
    assert not model.training  # eval mode: dropout off, so predictions are deterministic
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(probs, torch.softmax(logits, 1))
    assert torch.equal(targets, y)
    result = training.evaluate(loader, model, "cpu")
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


class Exploding:
    """Pickling fails after part of the checkpoint has been written."""

    def __reduce__(self):
        raise RuntimeError("simulated crash during save")


def test_atomic_save_keeps_the_previous_file_when_the_save_fails(tmp_path):
    path = tmp_path / "checkpoint-1.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_torch_save({"w": torch.zeros(100_000), "bad": Exploding()}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint-1.pt"]  # no temporary left behind
    atomic_torch_save({"epoch": 2}, path)
    assert training.load_checkpoint(path) == {"epoch": 2}


def test_load_checkpoint_reads_the_original_layout(tmp_path):
    state_dict = {"a": torch.ones(2)}
    path = write_legacy_checkpoint(tmp_path / "run", 7, name="swag", state_dict=state_dict)
    state = training.load_checkpoint(path)
    assert state["epoch"] == 7 and torch.equal(state["state_dict"]["a"], torch.ones(2))


class Payload:
    """A custom class: unpickling it would run code, so weights_only=True must refuse it."""

    def __init__(self):
        self.value = 1


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("truncated", "truncated or not a PyTorch checkpoint"),
        ("text", "truncated or not a PyTorch checkpoint"),
        ("empty", "truncated or not a PyTorch checkpoint"),
        ("json", None),  # any one-sentence UserError (torch reports an unpickling error here)
        ("pickled_code", "pickled code"),
        ("not_a_dict", "does not hold a checkpoint dictionary"),
    ],
)
def test_load_checkpoint_bad_files_are_user_errors(tmp_path, kind, message):
    path = tmp_path / "checkpoint-3.pt"
    if kind == "truncated":
        torch.save({"epoch": 3, "state_dict": nn.Linear(50, 50).state_dict()}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "json":
        path.write_text('{"epoch": 3}')
    elif kind == "pickled_code":
        torch.save({"epoch": 3, "payload": Payload()}, path)
    elif kind == "not_a_dict":
        torch.save(torch.ones(3), path)
    with pytest.raises(UserError, match=message) as error:
        training.load_checkpoint(path)
    text = str(error.value)
    assert str(path) in text and "\n" not in text and text.count(";") <= 2


def test_load_model_state_of_another_model_is_a_user_error():
    with pytest.raises(UserError, match="different model"):
        training.load_model_state(nn.Linear(3, 2), nn.Linear(3, 4).state_dict(), "ckpt.pt")


def test_adversarial_cross_entropy_matches_the_closed_form_fgsm_step():
    """Softmax regression: ∇_x CE(Wx + b, y) = Wᵀ(softmax(Wx + b) − onehot(y)) per example."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.arange(10) % 3
    loss, logits = training.adversarial_cross_entropy(model, x, y, epsilon=0.05)
    with torch.no_grad():
        weight, bias = model.weight, model.bias
        input_grad = (torch.softmax(x @ weight.T + bias, 1) - F.one_hot(y, 3)) @ weight / 10
        x_adv = x + 0.05 * (x.max() - x.min()) * input_grad.sign()
        expected = 0.5 * (F.cross_entropy(x @ weight.T + bias, y)
                          + F.cross_entropy(x_adv @ weight.T + bias, y))  # fmt: skip
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)  # the loss is float32
    torch.testing.assert_close(logits.detach(), x @ weight.T.detach() + bias.detach())
    assert loss.item() > F.cross_entropy(logits.detach(), y).item()  # the attack raises it
    loss.backward()  # weight gradients: clean and adversarial terms, attack held fixed
    x_adv = x_adv.detach()
    w, b = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    reference = 0.5 * (F.cross_entropy(x @ w.T + b, y) + F.cross_entropy(x_adv @ w.T + b, y))
    reference.backward()
    torch.testing.assert_close(model.weight.grad, w.grad)
    torch.testing.assert_close(model.bias.grad, b.grad)


def test_train_epoch_with_adversarial_loss_reports_it_and_learns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = blob_loader(num=32, batch=32)
    result = training.train_epoch(loader, model, frozen, "cpu", loss="adv_CE")
    expected, _ = training.adversarial_cross_entropy(model, *loader[0])
    assert result["loss"] == pytest.approx(expected.item(), rel=1e-6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = [training.train_epoch(blob_loader(), model, optimizer, "cpu", loss="adv_CE")["loss"]
              for _ in range(5)]  # fmt: skip
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(UserError, match="unknown loss 'hinge'"):
        training.train_epoch(loader, model, optimizer, "cpu", loss="hinge")
