"""Bayesian model averaging: manual averages, prefix curves, checkpoint members, the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_legacy_checkpoint
from torch import nn
from torch.optim.swa_utils import update_bn as reference_update_bn
from torchmetrics.functional.classification import multiclass_calibration_error

from swag.bma import CheckpointMembers, bayesian_model_average
from swag.bma_results import load_probability_cache, prefix_metrics, temperature_scaled_curves
from swag.errors import UserError
from swag.posteriors import SWA, SWAG, Checkpoint, SamplingOptions

C = 3  # classes


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, C))


def _swag(seed: int, steps: int = 4) -> SWAG:
    torch.manual_seed(seed)
    model = _net()
    swag = SWAG(_net())
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        swag.collect_model(model)
    return swag


def _batches(n: int, seed: int, batch: int = 10):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, C, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class _CountingLoader(list):
    """A list of batches that counts how often it is iterated (one per BN update)."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def test_bma_equals_a_manual_average_and_updates_bn_once_per_sample():
    members = [_swag(1), _swag(2)]
    test_sets = {"clean": _batches(30, 10), "fog_1": _batches(20, 11), "fog_2": _batches(20, 12)}
    bn_loader = _CountingLoader(_batches(40, 13))
    result = bayesian_model_average(
        members, test_sets, num_samples=3, device="cpu", bn_loader=bn_loader, seed=5
    )
    assert bn_loader.passes == 2 * 3  # one BN update per sample, not one per test set

    # Manual: redraw the same samples from fresh copies, with torch's own BN update.
    manual = {name: [] for name in test_sets}
    for m, seed in enumerate((1, 2)):
        swag = _swag(seed)
        for s in range(3):  # documented draw seeds: derived_seed(derived_seed(5, m), s)
            generator = torch.Generator().manual_seed((5 * 1_000_003 + m) * 1_000_003 + s)
            swag.sample(generator, scale=0.5)
            reference_update_bn(bn_loader, swag.base_model)
            swag.base_model.eval()
            with torch.no_grad():
                for name, batches in test_sets.items():
                    logits = torch.cat([swag.base_model(x) for x, _ in batches])
                    manual[name].append(logits.softmax(1))
    for name in test_sets:
        expected = torch.stack(manual[name]).double().mean(0)
        got = result.member_probs[name].astype(np.float64).mean(0)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
        targets = torch.cat([y for _, y in test_sets[name]]).numpy()
        np.testing.assert_array_equal(result.targets[name], targets)
    assert result.member_probs["clean"].shape == (2, 30, C)


def test_deterministic_members_ignore_generator_and_checkpoints_skip_bn():
    swag = _swag(3)
    sgd_model = _net().eval()
    test_sets = {"clean": _batches(20, 1)}
    bn_loader = _CountingLoader(_batches(20, 2))
    result = bayesian_model_average(
        [SWA(swag), Checkpoint(sgd_model)], test_sets, 1, "cpu", bn_loader
    )
    assert bn_loader.passes == 1  # the SWA mean only
    with torch.no_grad():
        expected = torch.cat([sgd_model.eval()(x) for x, _ in test_sets["clean"]]).softmax(1)
    np.testing.assert_allclose(result.member_probs["clean"][1], expected.numpy(), atol=1e-6)
    swa = swag.mean.float()
    assert torch.allclose(torch.cat([p.reshape(-1) for p in swag.base_model.parameters()]), swa)


def test_bn_model_without_bn_loader_and_bad_counts_fail_clearly():
    with pytest.raises(UserError, match="BatchNorm"):
        bayesian_model_average([_swag(1)], {"clean": _batches(10, 0)}, 1, "cpu")
    with pytest.raises(UserError, match="at least 1"):
        bayesian_model_average([], {"clean": _batches(10, 0)}, 0, "cpu")
    with pytest.raises(UserError, match="no members"):
        bayesian_model_average([], {"clean": _batches(10, 0)}, 1, "cpu")


def _brier(probs, targets):
    return ((probs - F.one_hot(targets, probs.shape[1]).double()) ** 2).sum(1).mean()


def test_prefix_curves_against_torch_and_torchmetrics():
    rng = np.random.default_rng(0)
    member_probs = rng.dirichlet(np.full(C, 0.5), size=(4, 200)).astype(np.float32)
    targets = rng.integers(0, C, 200)
    rows = prefix_metrics(member_probs, targets)
    assert [r["num_models"] for r in rows] == [1, 2, 3, 4]
    y = torch.as_tensor(targets)
    for m, row in enumerate(rows, start=1):
        p = torch.as_tensor(member_probs[:m], dtype=torch.float64).mean(0)
        assert row["nll"] == pytest.approx(float(F.nll_loss(p.log(), y)), rel=1e-6)
        assert row["accuracy"] == pytest.approx(float((p.argmax(1) == y).double().mean()))
        assert row["brier"] == pytest.approx(float(_brier(p, y)), rel=1e-6)
        ece = multiclass_calibration_error(p.float(), y, num_classes=C, n_bins=20, norm="l1")
        assert row["ece"] == pytest.approx(float(ece), abs=1e-5)
    # a per-sample array [M, S, N, C] gives the same curves as its member averages
    per_sample = np.repeat(member_probs[:, None], 2, axis=1)
    assert prefix_metrics(per_sample, targets)[-1]["nll"] == pytest.approx(rows[-1]["nll"])


def test_prefix_curve_of_hand_case():
    # two members, one example of class 0: p = (0.9, 0.1) then (0.5, 0.5)
    rows = prefix_metrics(np.array([[[0.9, 0.1]], [[0.5, 0.5]]]), np.array([0]))
    assert rows[0]["nll"] == pytest.approx(-np.log(0.9))
    assert rows[1]["nll"] == pytest.approx(-np.log(0.7))
    assert rows[1]["brier"] == pytest.approx(0.3**2 + 0.3**2)
    assert rows[1]["ece"] == pytest.approx(0.3)  # confidence 0.7, accuracy 1


def _write_swag(directory, swag, name):
    return write_legacy_checkpoint(directory, 10, name=name, state_dict=swag.state_dict())


def _block_swag(block: slice) -> SWAG:
    """A SWAG whose iterates moved only in parameter coordinates `block`."""
    torch.manual_seed(0)
    model = _net()
    swag = SWAG(_net())
    base = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for _ in range(5):
        theta = base.clone()
        theta[block] += torch.randn(theta[block].shape)
        offset = 0
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(theta[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        swag.collect_model(model)
    return swag


def test_each_checkpoint_is_sampled_with_its_own_deviation_matrix(tmp_path):
    # Member 1 varies only in coordinates 0..19, member 2 only in 20..39. The original reused
    # member 1's deviation matrix for member 2: its samples would move coordinates 0..19.
    first, second = slice(0, 20), slice(20, 40)
    paths = [
        _write_swag(tmp_path / "a", _block_swag(first), "swag"),
        _write_swag(tmp_path / "b", _block_swag(second), "swag"),
    ]
    members = CheckpointMembers(paths, "multiswag", _net)
    generator = torch.Generator().manual_seed(0)
    moves = []
    for posterior in members:
        for _ in range(10):
            posterior.sample(generator)
            theta = torch.cat([p.detach().reshape(-1) for p in posterior.model.parameters()])
            moves.append(theta.double() - posterior.mean)
    second_moves = torch.stack(moves[10:])
    # off-block coordinates move only by the clamped diagonal noise √0.5·1e-3·z (|z| < 6)
    assert second_moves[:, first].abs().max() < 6e-3
    assert second_moves[:, second].abs().max() > 0.3
    assert torch.stack(moves[:10])[:, second].abs().max() < 6e-3


def test_members_reject_the_wrong_kind_of_checkpoint(tmp_path):
    swag_path = _write_swag(tmp_path, _swag(0), "swag")
    sgd_path = write_legacy_checkpoint(tmp_path, 10, state_dict=_net().state_dict())
    assert isinstance(next(iter(CheckpointMembers([sgd_path], "ensemble", _net))), Checkpoint)
    assert isinstance(next(iter(CheckpointMembers([swag_path], "multiswa", _net))), SWA)
    with pytest.raises(UserError, match="is a swag file.*checkpoint-<epoch>.pt"):
        next(iter(CheckpointMembers([swag_path], "ensemble", _net)))
    with pytest.raises(UserError, match="is a checkpoint file.*swag-<epoch>.pt"):
        next(iter(CheckpointMembers([sgd_path], "multiswag", _net)))
    wrong = lambda: nn.Sequential(nn.Linear(4, 5), nn.Linear(5, C))  # noqa: E731
    with pytest.raises(UserError, match="architecture and number of classes"):
        next(iter(CheckpointMembers([swag_path], "multiswag", wrong)))


def test_float16_cache_reproduces_the_curves(tmp_path):
    members = [_swag(1), _swag(2)]
    test_sets = {"clean": _batches(30, 10), "fog_1": _batches(20, 11)}
    result = bayesian_model_average(
        members, test_sets, 2, "cpu", _batches(40, 13), cache_dir=tmp_path / "cache"
    )
    probs, targets = load_probability_cache(tmp_path / "cache")
    assert probs["fog_1"].shape == (2, 2, 20, C) and probs["fog_1"].dtype == np.float16
    assert not list((tmp_path / "cache").glob(".*tmp"))
    for name, curve in result.curves().items():
        cached = prefix_metrics(probs[name], targets[name])
        for row, row_cached in zip(curve, cached, strict=True):
            assert row_cached["nll"] == pytest.approx(row["nll"], rel=2e-3)
            assert row_cached["accuracy"] == row["accuracy"]


def test_temperature_scaled_curves_lower_heldout_nll_and_keep_accuracy():
    rng = np.random.default_rng(1)
    n = 4000
    logits = rng.normal(0, 2, size=(n, C))
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = (p_true.cumsum(1) > rng.random((n, 1))).argmax(1)
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # overconfident
    member_probs = {"clean": np.stack([sharp, sharp]), "fog_1": np.stack([sharp, sharp])}
    t, before, after = temperature_scaled_curves(member_probs, {"clean": targets, "fog_1": targets})
    assert len(t) == 2 and t[0] == pytest.approx(3.0, rel=0.1)
    for name in ("clean_heldout", "fog_1"):
        assert after[name][-1]["nll"] < before[name][-1]["nll"] - 0.1
        assert after[name][-1]["accuracy"] == before[name][-1]["accuracy"]
    assert before["clean_heldout"][0]["num_models"] == 1


def test_max_num_models_keeps_the_most_recent_deviation_columns(tmp_path):
    swag = _swag(4, steps=5)
    path = _write_swag(tmp_path, swag, "swag")
    options = SamplingOptions(max_num_models=2)
    posterior = next(iter(CheckpointMembers([path], "multiswag", _net, options)))
    assert posterior.rank == 2
    torch.testing.assert_close(posterior.deviations, swag.deviations[-2:])


def test_bf16_autocast_changes_probabilities_only_at_bf16_precision():
    """bf16 autocast runs the same draws and BN passes; probabilities agree to bf16 precision
    (about 3 significant digits), so curves are comparable but not bit-identical."""
    test_sets = {"clean": _batches(30, 10)}
    runs = {}
    for bf16 in (False, True):
        bn_loader = _CountingLoader(_batches(40, 13))
        runs[bf16] = bayesian_model_average(
            [_swag(1)], test_sets, 3, "cpu", bn_loader=bn_loader, seed=5, bf16=bf16
        )
        assert bn_loader.passes == 3
    exact, low = runs[False].member_probs["clean"], runs[True].member_probs["clean"]
    np.testing.assert_allclose(low, exact, atol=0.03)
    assert not np.array_equal(low, exact)  # autocast really ran in bf16
