"""experiments/train/run_swag.py end to end on tiny data: outputs, SWAG BMA, exact resumption,
and every bad input through a real subprocess (exit 2, one `error:` line)."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, skip_md5, write_cifar10, write_mnist_format
from torch import nn

from experiments.train import run_swag
from swag import metrics, models, training
from swag.posteriors import SWAG
from swag.transforms import input_preset

SCRIPT = REPO_ROOT / "experiments" / "train" / "run_swag.py"
MNIST = input_preset(models.get_model("LeNet5").preset)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return write_mnist_format(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


def base_args(out: Path, data_path: Path, *extra: str, model="LeNet5", dataset="FashionMNIST"):
    return [
        "--dir", str(out), "--data_path", str(data_path), "--dataset", dataset,
        "--model", model, "--use_test", "--batch_size", "32", "--lr_init", "0.05",
        "--device", "cpu", *extra,
    ]  # fmt: skip


SWAG_ARGS = ("--swag", "--swag_start", "1", "--swag_lr", "0.01", "--cov_mat", "--eval_freq", "1")


@pytest.fixture(scope="module")
def e2e(fmnist, tmp_path_factory):
    """LeNet5, 3 epochs, SWAG collected after epochs 2 and 3, a checkpoint every epoch."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    args = base_args(out, fmnist.data_path, "--epochs", "3", "--save_freq", "1", *SWAG_ARGS)
    assert run_swag.main(args) == 0
    return out


def parameters(state_dict: dict, model: nn.Module) -> torch.Tensor:
    """The parameters (not buffers) of a saved state, flattened in `model.parameters()` order."""
    names = [name for name, _ in model.named_parameters()]
    return torch.cat([state_dict[name].reshape(-1).double() for name in names])


def lenet_probs(state_dict: dict, images: np.ndarray) -> torch.Tensor:
    """Softmax of a LeNet5 checkpoint on raw uint8 images [N, 28, 28], normalised by hand."""
    model = models.get_model("LeNet5").build(10)
    model.load_state_dict(state_dict)
    x = (torch.as_tensor(images).float()[:, None] / 255 - MNIST.mean[0]) / MNIST.std[0]
    with torch.no_grad():
        return torch.softmax(model.eval()(x), 1)


def test_outputs_of_an_swag_run(e2e, fmnist):
    expected = {"command.sh", "config.json", "metrics.jsonl", "sgd_ens_preds.npz"}
    expected |= {f"checkpoint-{e}.pt" for e in range(4)} | {f"swag-{e}.pt" for e in range(4)}
    assert expected <= {p.name for p in e2e.iterdir()}
    assert "run_swag" in (e2e / "command.sh").read_text()
    config = json.loads((e2e / "config.json").read_text())
    assert config["epochs"] == 3 and config["swag"] is True and config["model"] == "LeNet5"
    rows = [json.loads(line) for line in (e2e / "metrics.jsonl").read_text().splitlines()]
    assert [row["ep"] for row in rows] == [1, 2, 3]
    assert all(0 <= row["te_acc"] <= 100 and np.isfinite(row["tr_loss"]) for row in rows)
    assert "swa_te_acc" not in rows[0] and "swa_te_acc" in rows[2]
    # The original schedule (docs/original_code.md): t = epoch/swag_start, so epoch 0 runs at
    # lr_init, later at swag_lr.
    assert rows[0]["lr"] == pytest.approx(0.05) and rows[2]["lr"] == pytest.approx(0.01)


def test_adversarial_loss_run_trains_and_differs_from_plain_cross_entropy(tmp_path, fmnist):
    """--loss adv_CE (the original's FGSM option) through the whole script, on CPU."""
    finals = {}
    for loss in ("CE", "adv_CE"):
        out = tmp_path / loss
        args = base_args(out, fmnist.data_path, "--epochs", "2", "--loss", loss, *SWAG_ARGS)
        assert run_swag.main(args) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["tr_loss"] < rows[0]["tr_loss"] and rows[-1]["te_acc"] > 20  # chance: 10
        assert json.loads((out / "config.json").read_text())["loss"] == loss
        finals[loss] = torch.load(out / "checkpoint-2.pt", weights_only=True)["state_dict"]
    assert not torch.equal(finals["CE"]["fc_part.0.weight"], finals["adv_CE"]["fc_part.0.weight"])


def test_swag_moments_are_those_of_the_saved_iterates(e2e):
    """Collection after epochs 2 and 3 (epoch + 1 > swag_start = 1): their checkpoints."""
    model = models.get_model("LeNet5").build(10)
    iterates = [
        parameters(training.load_checkpoint(e2e / f"checkpoint-{e}.pt")["state_dict"], model)
        for e in (2, 3)
    ]
    state = training.load_checkpoint(e2e / "swag-3.pt")["state_dict"]
    assert int(state["n_models"]) == 2 and state["deviations"].shape[0] == 2
    mean = (iterates[0] + iterates[1]) / 2
    torch.testing.assert_close(state["mean"], mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(state["deviations"][1].double(), iterates[1] - mean, atol=1e-6,
                               rtol=0)  # fmt: skip
    earlier = training.load_checkpoint(e2e / "swag-1.pt")["state_dict"]
    assert int(earlier["n_models"]) == 0  # nothing collected after epoch 1


def test_sgd_ensemble_predictions_average_the_collected_checkpoints(e2e, fmnist):
    saved = np.load(e2e / "sgd_ens_preds.npz")
    np.testing.assert_array_equal(saved["targets"], fmnist.test_labels)
    expected = (
        sum(
            lenet_probs(
                training.load_checkpoint(e2e / f"checkpoint-{e}.pt")["state_dict"],
                fmnist.test_images,
            )  # fmt: skip
            for e in (2, 3)
        )
        / 2
    )
    np.testing.assert_allclose(saved["predictions"], expected.numpy(), atol=1e-5)


def test_swag_bayesian_model_average_from_the_checkpoint(e2e, fmnist):
    from swag import data

    posterior = SWAG(models.get_model("LeNet5").build(10))
    posterior.load_state_dict(training.load_checkpoint(e2e / "swag-3.pt")["state_dict"])
    loader = data.array_loader(fmnist.test_images, fmnist.test_labels, MNIST, 32)
    ensemble = metrics.RunningEnsemble(64, 10)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        posterior.sample(scale=0.5, generator=generator)
        training.update_bn(loader, posterior.base_model, "cpu")
        ensemble.update(training.predict(loader, posterior.base_model, "cpu")[0])
    probs = ensemble.probs.numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    # Chance is 10% ± 3.8% (s.d., 64 examples): 30% is over 5 s.d. above it.
    assert metrics.accuracy(probs, fmnist.test_labels) > 0.3


def stop_after(monkeypatch, epochs_done: int) -> None:
    """Make main() raise KeyboardInterrupt when epoch `epochs_done` (0-indexed) starts."""
    original = run_swag.run_epoch

    def run_epoch(args, run, epoch, device):
        if epoch == epochs_done:
            raise KeyboardInterrupt
        return original(args, run, epoch, device)

    monkeypatch.setattr(run_swag, "run_epoch", run_epoch)


def dropout_net(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(4 * 8 * 8, num_classes),
    )  # fmt: skip


def with_dropout_model(monkeypatch) -> None:
    """Serve a tiny dropout network as `--model DropoutNet` without touching the registry."""
    spec = models.ModelSpec("DropoutNet", dropout_net, MNIST)
    original = models.get_model
    monkeypatch.setattr(
        models, "get_model", lambda name: spec if name == spec.name else original(name)
    )


def assert_same_tensors(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same_tensors(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list | tuple):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{path}/{index}")
    else:
        assert a == b, path


@pytest.mark.parametrize(
    "model, dataset, loader",
    [
        ("PreResNet8", "CIFAR10", ("--loader", "fast")),  # BatchNorm
        ("DropoutNet", "FashionMNIST", ("--loader", "fast")),  # dropout draws
        ("DropoutNet", "FashionMNIST", ("--loader", "torchvision", "--num_workers", "0")),
        pytest.param(  # worker processes: seconds of start-up per epoch
            "DropoutNet", "FashionMNIST", ("--loader", "torchvision", "--num_workers", "2"),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["PreResNet8-fast", "DropoutNet-fast", "DropoutNet-torchvision", "DropoutNet-workers"],
)  # fmt: skip
def test_resume_is_bit_identical(tmp_path, fmnist, monkeypatch, model, dataset, loader):
    """4 epochs straight vs 2 epochs, a stop, then --resume checkpoint-2.pt: equal bits."""
    if dataset == "CIFAR10":
        skip_md5(monkeypatch)
        data_path = write_cifar10(tmp_path / "cifar", n_train=100, n_test=20).data_path
    else:
        data_path = fmnist.data_path
    if model == "DropoutNet":
        with_dropout_model(monkeypatch)
    extra = ("--epochs", "4", "--save_freq", "2", *SWAG_ARGS, *loader)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_swag.main(base_args(straight, data_path, *extra, model=model, dataset=dataset)) == 0
    args = base_args(stopped, data_path, *extra, model=model, dataset=dataset)
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            run_swag.main(args)
    assert not (stopped / "checkpoint-4.pt").exists()
    assert run_swag.main([*args, "--resume", str(stopped / "checkpoint-2.pt")]) == 0
    for name in ("checkpoint-4.pt", "swag-4.pt"):
        a = training.load_checkpoint(straight / name)
        b = training.load_checkpoint(stopped / name)
        assert_same_tensors(a["state_dict"], b["state_dict"], name)
        if "optimizer" in a:
            assert_same_tensors(a["optimizer"]["state"], b["optimizer"]["state"], name)
    swag_state = training.load_checkpoint(stopped / "swag-4.pt")["state_dict"]
    assert int(swag_state["n_models"]) == 3
    a, b = np.load(straight / "sgd_ens_preds.npz"), np.load(stopped / "sgd_ens_preds.npz")
    np.testing.assert_array_equal(a["predictions"], b["predictions"])
    rows = lambda d: [  # noqa: E731
        {k: v for k, v in json.loads(line).items() if k not in ("time", "mem_usage")}
        for line in (d / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows(straight) == rows(stopped)


@pytest.mark.parametrize("where", ["new_directory", "older_checkpoint_same_directory"])
def test_resume_restores_the_sgd_ensemble_of_the_checkpoint(tmp_path, fmnist, monkeypatch, where):
    """The SGD ensemble after resuming from checkpoint-2.pt must be that of epoch 2."""
    with_dropout_model(monkeypatch)
    extra = ("--epochs", "4", "--save_freq", "2", *SWAG_ARGS)
    straight = tmp_path / "straight"
    assert run_swag.main(base_args(straight, fmnist.data_path, *extra, model="DropoutNet")) == 0
    reference = np.load(straight / "sgd_ens_preds.npz")["predictions"]
    out = tmp_path / "moved" if where == "new_directory" else straight
    resume = ["--resume", str(straight / "checkpoint-2.pt")]
    assert run_swag.main([*base_args(out, fmnist.data_path, *extra, model="DropoutNet"),
                          *resume]) == 0  # fmt: skip
    np.testing.assert_allclose(np.load(out / "sgd_ens_preds.npz")["predictions"], reference,
                               atol=1e-6)  # fmt: skip


class Payload:
    """Unpickling this would run code from this module: weights_only=True refuses it."""


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, fmnist):
    root = tmp_path_factory.mktemp("bad")
    lenet = models.get_model("LeNet5").build(10)
    good = {"epoch": 1, "state_dict": lenet.state_dict()}
    torch.save(good, root / "checkpoint-1.pt")
    payload = (root / "checkpoint-1.pt").read_bytes()
    (root / "truncated.pt").write_bytes(payload[: len(payload) // 3])
    torch.save({"epoch": 1, "state_dict": nn.Linear(3, 2).state_dict()}, root / "other.pt")
    torch.save({"epoch": 1, "state_dict": lenet.state_dict(), "x": Payload()}, root / "code.pt")
    torch.save({"weights": lenet.state_dict()}, root / "weights.pt")
    np.save(root / "labels.npy", np.zeros(200, dtype=np.int64))
    (root / "empty").mkdir()
    return root


def run_script(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


BAD_INPUTS = {
    "unknown_dataset": ({"--dataset": "ImageNet"}, "unknown --dataset 'ImageNet'; choose one of"),
    "unknown_model": ({"--model": "ResNet9000"}, "unknown model 'ResNet9000'; choose one of"),
    "missing_data": ({"--data_path": "{bad}/empty"}, "--download"),
    "label_arr_length": ({"--label_arr": "{bad}/labels.npy"}, "full training set"),
    "swag_start_0": ({"--swag": None, "--swag_start": "0"}, "--swa_start: must be a positive"),
    "swag_start_ge_epochs": ({"--swag": None, "--swag_start": "2"}, "--swag_start must lie"),
    "truncated_resume": ({"--resume": "{bad}/truncated.pt"}, "truncated or not a PyTorch"),
    "not_a_checkpoint": ({"--resume": "{bad}/labels.npy"}, "labels.npy"),
    "other_model": ({"--resume": "{bad}/other.pt"}, "different model"),
    "pickled_code": ({"--resume": "{bad}/code.pt"}, "pickled code"),
    "resume_other_registry_model": (
        {"--model": "MLP", "--resume": "{bad}/checkpoint-1.pt"}, "different model"
    ),
    "resume_without_its_swag": (
        {"--swag": None, "--swag_start": "0.5", "--resume": "{bad}/checkpoint-1.pt"},
        "swag-1.pt is missing; pass the SWAG checkpoint of epoch 1 with --swag_resume",
    ),
    "resume_a_foreign_dict": ({"--resume": "{bad}/weights.pt"}, "is not a checkpoint-<e>.pt"),
    "subspace_pca": ({"--subspace": "pca"}, "--subspace pca is not supported"),
    "inference_projected_sgd": (
        {"--inference": "projected_sgd"}, "--inference projected_sgd is not supported"
    ),
}  # fmt: skip


def with_flags(args: list[str], flags: dict[str, str | None]) -> list[str]:
    """Replace the values of flags already in `args`, append the others (None: a bare flag)."""
    args = list(args)
    for flag, value in flags.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag] if value is None else [flag, value]
    return args


def prepare_bad_case(case: str, root: Path, fmnist, bad_files) -> tuple[list[str], str, Path]:
    """Arguments, expected message, and a --dir already holding an earlier run's outputs."""
    flags, message = BAD_INPUTS[case]
    flags = {k: None if v is None else v.format(bad=bad_files) for k, v in flags.items()}
    out = root / "run"
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"ep": 1}\n')
    (out / "command.sh").write_text("python run_swag.py --epochs 2\n")
    shutil.copy(bad_files / "checkpoint-1.pt", out / "checkpoint-1.pt")
    return with_flags(base_args(out, fmnist.data_path, "--epochs", "2"), flags), message, out


def check_bad_case(code: int, stderr: str, message: str, out: Path) -> None:
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0]
    # Nothing already written is lost: not even the command line of the earlier run.
    assert (out / "metrics.jsonl").read_text() == '{"ep": 1}\n'
    assert (out / "command.sh").read_text() == "python run_swag.py --epochs 2\n"
    assert training.load_checkpoint(out / "checkpoint-1.pt")["epoch"] == 1


def run_as_main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Execute the script file as `__main__` in this process (what `python run_swag.py` does,
    without the interpreter start-up); returns the exit status and stderr."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line(case, tmp_path, fmnist, bad_files, monkeypatch,
                                               capsys):  # fmt: skip
    args, message, out = prepare_bad_case(case, tmp_path, fmnist, bad_files)
    code, stderr = run_as_main(args, monkeypatch, capsys)
    check_bad_case(code, stderr, message, out)


SUBPROCESS_CASES = ["unknown_model", "truncated_resume"]


@pytest.mark.parametrize(
    "case",
    [c if c in SUBPROCESS_CASES else pytest.param(c, marks=pytest.mark.slow) for c in BAD_INPUTS],
)
def test_bad_input_in_a_subprocess(case, tmp_path, fmnist, bad_files):
    """The same through a real interpreter (a few cases by default, all with -m slow)."""
    args, message, out = prepare_bad_case(case, tmp_path, fmnist, bad_files)
    result = run_script(args)
    check_bad_case(result.returncode, result.stderr, message, out)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, fmnist, monkeypatch, capsys):
    out = tmp_path / "run"
    args = base_args(out, fmnist.data_path, "--epochs", "3", "--save_freq", "1")
    code, stderr = run_as_main(with_flags(args, {"--lr_init": "1e6"}), monkeypatch, capsys)
    assert code == 2 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training diverged in epoch 1")
    assert str(out / "checkpoint-0.pt") in lines[0]
    state = training.load_checkpoint(out / "checkpoint-0.pt")
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (out / "checkpoint-1.pt").exists()


README_COMMANDS = {
    "PreResNet20_swag": "--dataset=CIFAR10 --save_freq=300 --model=PreResNet20 --lr_init=0.1 "
    "--wd=3e-4 --swag --swag_start=161 --swag_lr=0.01 --cov_mat --use_test",
    "PreResNet20_sgd": "--dataset=CIFAR10 --model=PreResNet20 --lr_init=0.1 --wd=3e-4 --use_test",
    "VGG16_swag": "--dataset=CIFAR10 --save_freq=300 --model=VGG16 --lr_init=0.05 --wd=5e-4 "
    "--swag --swag_start=161 --swag_lr=0.01 --cov_mat --use_test",
    "LeNet5_mnist": "--dataset=MNIST --save_freq=50 --model=LeNet5 --lr_init=0.05 --swag "
    "--swag_start=25 --swag_lr=0.01 --cov_mat --use_test --wd=0. --prior_var=1e-1 --seed 1",
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "VGG16_swag" else n for n in README_COMMANDS],
)
def test_readme_commands_run_with_fewer_epochs(name, tmp_path, monkeypatch):
    """The README's commands (docs/original_code.md), unchanged apart from --epochs 2 and a
    --swag_start inside it (2 epochs, collection after the second), on tiny data."""
    skip_md5(monkeypatch)
    if "MNIST" in README_COMMANDS[name]:
        write_mnist_format(tmp_path, n_train=64, n_test=16, dataset="MNIST")
    else:
        write_cifar10(tmp_path, n_train=50, n_test=10)
    argv = README_COMMANDS[name].replace("=161", "=1").replace("=25", "=1").split()
    out = tmp_path / "run"
    argv += [f"--data_path={tmp_path}", "--epochs=2", f"--dir={out}", "--device=cpu"]
    assert run_swag.main(argv) == 0
    assert (out / "checkpoint-2.pt").is_file()
    if "--swag" in argv:
        swag_state = training.load_checkpoint(out / "swag-2.pt")["state_dict"]
        assert int(swag_state["n_models"]) == 1
        assert (out / "sgd_ens_preds.npz").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["prior_var"] == (0.1 if name == "LeNet5_mnist" else None)
