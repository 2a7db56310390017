"""eval_multiswag.py and run_multiswag.sh on a tiny Fashion-MNIST written as real idx files."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx

from swag import models
from swag.errors import UserError
from swag.metrics import accuracy, nll
from swag.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 64, 40


def _script(name: str):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "experiments" / "train" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_fashion_mnist(data_path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent 28x28 images in <data_path>/fashionmnist/FashionMNIST/raw (idx files)."""
    rng = np.random.default_rng(seed)
    raw = data_path / "fashionmnist" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, y in enumerate(labels):  # a bright bar whose row encodes the class
            images[i, 2 + 2 * y : 4 + 2 * y] = 250
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
        out[split] = (images.astype(np.uint8), labels)
    return out["t10k"]


def write_tiny_shifted(path: Path, test_images, test_labels) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for severity in (1, 2):
        noisy = np.clip(
            test_images + 40.0 * severity * (np.arange(784).reshape(28, 28) % 2), 0, 255
        )
        np.savez(path / f"stripes_{severity}.npz", data=noisy.astype(np.uint8), labels=test_labels)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny LeNet5 SWAG runs trained by run_swag.py."""
    root = tmp_path_factory.mktemp("multiswag")
    test_images, test_labels = write_tiny_fashion_mnist(root / "data")
    write_tiny_shifted(root / "shifted", test_images, test_labels)
    run_swag = _script("run_swag")
    for seed in (1, 2):
        run_swag.main([
            "--dir", str(root / f"swag_{seed}"), "--dataset", "FashionMNIST",
            "--data_path", str(root / "data"), "--model", "LeNet5", "--epochs", "3",
            "--swag", "--swag_start", "1", "--swag_lr", "0.01", "--lr_init", "0.05",
            "--cov_mat", "--use_test", "--batch_size", "16", "--seed", str(seed),
            "--device", "cpu", "--eval_freq", "10",
        ])  # fmt: skip
    return root


def _eval(root: Path, method: str, name: str, *extra: str) -> dict:
    ckpt = "swag-3.pt" if method != "ensemble" else "checkpoint-3.pt"
    _script("eval_multiswag").main([
        "--savedir", str(root / "eval"), "--method", method, "--model", "LeNet5",
        "--dataset", "FashionMNIST", "--data_path", str(root / "data"), "--use_test",
        "--swag_ckpts", *(str(root / f"swag_{s}" / ckpt) for s in (1, 2)),
        "--corrupted_path", str(root / "shifted"), "--device", "cpu", "--batch_size", "16",
        *extra,
    ])  # fmt: skip
    return json.loads((root / "eval" / f"{name}.json").read_text())


def test_every_method_writes_prefix_curves_for_every_test_set(runs):
    for method in ("multiswag", "multiswa", "ensemble"):
        results = _eval(runs, method, method, "--swag_samples", "2")
        assert set(results["curves"]) == {"clean", "stripes_1", "stripes_2"}
        assert results["num_samples"] == (2 if method == "multiswag" else 1)
        for rows in results["curves"].values():
            assert [r["num_models"] for r in rows] == [1, 2]
        with open(runs / "eval" / f"{method}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 3 * 2 and {r["severity"] for r in rows} == {"0", "1", "2"}
    assert (runs / "eval" / "eval_command.sh").is_file()


@pytest.mark.parametrize("extra", [[], ["--channels_last"]])
def test_ensemble_matches_the_checkpoints_own_predictions(runs, extra):
    results = _eval(runs, "ensemble", "ensemble", *extra)
    spec = models.get_model("LeNet5")
    images, labels = write_tiny_fashion_mnist(runs / "unused")  # same seed: the same test set
    x = (torch.as_tensor(images, dtype=torch.float32)[:, None] / 255 - 0.1307) / 0.3081
    probs = []
    for seed in (1, 2):
        model = spec.build(10)
        model.load_state_dict(
            load_checkpoint(runs / f"swag_{seed}" / "checkpoint-3.pt")["state_dict"]
        )
        with torch.no_grad():
            probs.append(model.eval()(x).softmax(1).double())
    for m, row in enumerate(results["curves"]["clean"], start=1):
        p = torch.stack(probs[:m]).mean(0)
        assert row["nll"] == pytest.approx(nll(p, labels), rel=1e-5)
        assert row["accuracy"] == pytest.approx(accuracy(p, labels))


def test_bn_subset_cache_and_temperature_scaling(runs):
    results = _eval(
        runs, "multiswag", "multiswag", "--swag_samples", "2", "--bn_subset", "20",
        "--cache_probs", "--temperature_scale", "--seed", "3",
    )  # fmt: skip
    scaling = results["temperature_scaling"]
    assert len(scaling["temperature"]) == 2 and all(t > 0 for t in scaling["temperature"])
    assert set(scaling["after"]) == {"clean_heldout", "stripes_1", "stripes_2"}
    assert np.load(runs / "eval" / "probs_multiswag" / "clean.npy").shape == (2, 2, N_TEST, 10)


def test_user_errors(runs, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        _script("eval_multiswag").main([
            "--savedir", str(tmp_path), "--model", "LeNet5", "--data_path", str(runs / "data"),
            "--swag_ckpts", str(tmp_path / "missing.pt"),
        ])  # fmt: skip
    with pytest.raises(UserError, match="is a swag file, which the ensemble method cannot use"):
        _eval(runs, "ensemble", "ensemble", "--swag_ckpts", str(runs / "swag_1" / "swag-3.pt"))
    script = ROOT / "experiments" / "train" / "eval_multiswag.py"
    done = subprocess.run(
        [sys.executable, str(script), "--savedir", str(tmp_path), "--model", "NoSuchNet",
         "--data_path", str(tmp_path), "--swag_ckpts"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr


def test_plot_from_results_and_from_cache(runs, tmp_path):
    from PIL import Image

    _eval(runs, "multiswag", "multiswag", "--swag_samples", "2", "--cache_probs")
    _eval(runs, "ensemble", "ensemble")
    plot = _script("plot_multiswag")
    sources = [str(runs / "eval" / "ensemble.json"), str(runs / "eval" / "probs_multiswag")]
    plot.main(["--results", *sources, "--out", str(tmp_path / "fig"), "--metrics", "nll", "ece"])
    for metric in ("nll", "ece"):
        with Image.open(tmp_path / f"fig_{metric}.png") as image:
            assert image.width > 200 and image.height > 200  # clean row + stripes row
    assert plot.panels(["clean", "fog_2", "fog_1", "snow_1"], ["fog"], None) == [
        ("clean", [(0, "clean")]),
        ("fog", [(1, "fog_1"), (2, "fog_2")]),
    ]
    with pytest.raises(UserError, match="eval_multiswag"):
        plot.main(["--results", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "x")])


def test_run_multiswag_sh_end_to_end(tmp_path):
    """The shell driver at toy scale; CUDA_VISIBLE_DEVICES=0,1 exercises its one-run-per-GPU
    branch while DEVICE=cpu keeps every run on the CPU."""
    test_images, test_labels = write_tiny_fashion_mnist(tmp_path / "data")
    write_tiny_shifted(tmp_path / "shifted", test_images, test_labels)
    env = {
        **os.environ, "DATASET": "FashionMNIST", "MODEL": "LeNet5", "EPOCHS": "2",
        "SWAG_RUNS": "2", "LR": "0.05", "WD": "0", "SWAG_START": "1", "SWAG_LR": "0.01",
        "SWAG_SAMPLES": "2", "BASEDIR": str(tmp_path / "ckpts"), "DATAPATH": str(tmp_path / "data"),
        "CORRUPTED_PATH": str(tmp_path / "shifted"), "DEVICE": "cpu", "PYTHON": sys.executable,
        "CUDA_VISIBLE_DEVICES": "0,1", "EXTRA_TRAIN_ARGS": "--batch_size 16",
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    script = ROOT / "experiments" / "train" / "run_multiswag.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "ckpts" / "multiswag"
    for method in ("multiswag", "multiswa", "ensemble"):
        results = json.loads((out / f"{method}.json").read_text())
        assert len(results["curves"]["stripes_2"]) == 2
    assert (out / "multiswag_nll.png").is_file() and (out / "multiswag_accuracy.png").is_file()
    assert (tmp_path / "ckpts" / "swag_2" / "checkpoint-2.pt").is_file()


def test_severity_table_averages_over_corruptions():
    plot = _script("plot_multiswag")
    curve = lambda *v: [{"num_models": m + 1, "nll": x} for m, x in enumerate(v)]  # noqa: E731
    curves = {
        "ensemble": {"clean": curve(1.0, 0.5), "a_1": curve(2.0, 1.0), "b_1": curve(4.0, 2.0)}
    }
    table = plot.severity_table(curves, plot.panels(list(curves["ensemble"]), None, None), "nll")
    assert "| Deep Ensembles | clean | 1.0000 | 0.5000 |" in table
    assert "| Deep Ensembles | 1 (mean of 2) | 3.0000 | 1.5000 |" in table


def _write_cache(folder: Path, true_class_probs: dict[str, np.ndarray]) -> None:
    """A probs_<method>/ cache: p(true class) per [member, sample] for 2 examples of class 0."""
    folder.mkdir(parents=True)
    for name, p in true_class_probs.items():
        p = np.asarray(p, np.float16)[..., None, None].repeat(2, axis=2)  # [M, S, N=2, 1]
        np.save(folder / f"{name}.npy", np.concatenate([p, 1 - p], axis=3))  # [M, S, 2, C=2]
    np.savez(folder / "targets.npz", **{name: np.zeros(2, np.int64) for name in true_class_probs})


def test_member_nll_table_by_hand(tmp_path, capsys):
    """Member NLL = −log(mean over its samples of p(true)); severities average corruptions."""
    _write_cache(tmp_path / "probs_multiswag", {
        "clean": [[0.5, 0.75], [0.25, 0.25]],
        "blur_5": [[0.5, 0.5], [0.125, 0.125]],
        "noise_5": [[0.25, 0.25], [0.5, 0.5]],
    })  # fmt: skip
    _write_cache(tmp_path / "probs_ensemble", {
        "clean": [[0.5], [0.25]], "blur_5": [[0.25], [0.125]], "noise_5": [[0.25], [0.25]]
    })  # fmt: skip
    caches = [str(tmp_path / "probs_ensemble"), str(tmp_path / "probs_multiswag")]
    assert _script("member_nll").main(["--caches", *caches]) == 0
    rows = {
        tuple(cell.strip() for cell in line.strip("|").split("|")[:2]):
        [float(cell) for cell in line.strip("|").split("|")[2:]]
        for line in capsys.readouterr().out.splitlines()[2:]
    }  # fmt: skip
    np.testing.assert_allclose(rows["clean", "MultiSWAG"],
                               [-np.log(0.625), -np.log(0.25), -np.log(0.625 * 0.25) / 2],
                               atol=1e-4)  # fmt: skip
    sev5_de = [-(np.log(0.25) + np.log(0.25)) / 2, -(np.log(0.125) + np.log(0.25)) / 2]
    sev5_mswag = [-(np.log(0.5) + np.log(0.25)) / 2, -(np.log(0.125) + np.log(0.5)) / 2]
    np.testing.assert_allclose(rows["severity 5", "Deep Ensembles"][:2], sev5_de, atol=1e-4)
    np.testing.assert_allclose(rows["severity 5", "DE − MultiSWAG"][:2],
                               np.subtract(sev5_de, sev5_mswag), atol=1e-4)  # fmt: skip
    with pytest.raises(UserError, match="probs_<method>"):
        _script("member_nll").main(["--caches", str(tmp_path)])
