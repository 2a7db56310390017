"""The rethinking-generalisation GP drivers end to end on tiny data in the real formats, and
their answers to bad input (one sentence, earlier outputs intact)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments.rethinking_generalization import (
    gp_cifar_prepare_data,
    gp_prepare_data,
    gp_train_binary_corrupted,
    gp_train_one_vs_all,
    plot_rethinking,
)
from swag.errors import UserError

FAST = ["--iterations", "3", "--no_progress", "--threads", "1"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_fashion_mnist):
    root = tmp_path_factory.mktemp("rethinking")
    data = tiny_fashion_mnist(root / "data", n_train=200, n_test=60)
    argv = [
        "--dataset",
        "FashionMNIST",
        "--data_path",
        str(data.data_path),
        "--dir",
        str(root / "prepared"),
    ]
    assert gp_prepare_data.main(argv) == 0
    return root, data


def test_prepare_writes_the_original_arrays(prepared):
    root, data = prepared
    folder = root / "prepared"
    assert np.array_equal(np.load(folder / "train_x.npy"), data.train_images)
    assert np.array_equal(np.load(folder / "test_y.npy"), data.test_labels)
    shuffled = np.load(folder / "shuffled_train_y.npy")
    assert np.array_equal(np.sort(shuffled), np.sort(data.train_labels))
    assert json.loads((folder / "meta.json").read_text())["class_names"][2] == "pullover"


def test_prepare_reads_cifar_pickles(tmp_path, tiny_cifar10):
    data = tiny_cifar10(tmp_path / "data", n_train=50, n_test=20)
    argv = ["--dataset", "CIFAR10", "--data_path", str(data.data_path), "--dir", str(tmp_path)]
    assert gp_cifar_prepare_data.main(argv) == 0
    assert np.array_equal(np.load(tmp_path / "train_x.npy"), data.train_images)  # [N, 32, 32, 3]


def test_binary_driver(prepared, capsys):
    root, _ = prepared
    out = root / "binary"
    for fraction in ("0", "0.3"):
        argv = [
            "--data_dir",
            str(root / "prepared"),
            "--dir",
            str(out),
            "--corrupted_labels",
            fraction,
            "--classes",
            "0",
            "1",
            *FAST,
        ]
        assert gp_train_binary_corrupted.main(argv) == 0
    argv[argv.index("0.3")] = "0.75"
    assert gp_train_binary_corrupted.main(argv) == 0
    assert "anti-correlated" in capsys.readouterr().err
    results = json.loads((out / "bin_model_corrupted0.3.json").read_text())
    assert results["n_train"] == 40 and results["flipped"] == 12
    assert len(results["neg_elbo_per_example"]) == 3
    assert 0 <= results["test_accuracy"] <= 1 and results["elbo_per_example"] < 0
    assert (out / "bin_model_corrupted0.pth").is_file()
    laplace = out / "laplace.json"
    rows = [
        {"fraction": f, "log_marglik_per_example": -f, "train_acc": 1.0, "test_acc": 0.5}
        for f in (0.0, 0.5)
    ]
    laplace.write_text(json.dumps(rows))
    argv = ["--binary_dir", str(out), "--laplace_json", str(laplace), "--out", str(out / "f.png")]
    assert plot_rethinking.main(argv) == 0 and (out / "f.png").is_file()
    laplace.write_text(json.dumps([{"fraction": 0.1}]))
    with pytest.raises(UserError, match="must be a list of objects with keys"):
        plot_rethinking.main(argv)


def test_one_vs_all_driver(prepared):
    root, _ = prepared
    out = root / "one_vs_all"
    argv = [
        "--data_dir",
        str(root / "prepared"),
        "--dir",
        str(out),
        "--n_train",
        "50",
        "--n_test",
        "30",
        *FAST,
    ]
    assert gp_train_one_vs_all.main(argv) == 0
    summary = json.loads((out / "shuffled_summary.json").read_text())
    assert len(summary["elbo_per_example"]) == 10 and 0 <= summary["train_accuracy"] <= 1
    conf = np.load(out / "shuffled_conf3.npz")
    assert conf["train"].shape == (50,) and conf["test"].shape == (30,)
    assert gp_train_one_vs_all.main([*argv, "--aggregate"]) == 0
    with pytest.raises(UserError, match="true_conf0.npz"):
        gp_train_one_vs_all.main([*argv, "--aggregate", "--true_labels"])


def test_bad_input(prepared, tmp_path):
    root, _ = prepared
    base = ["--data_dir", str(root / "prepared"), "--dir", str(root / "binary"), *FAST]
    before = (root / "binary" / "bin_model_corrupted0.json").read_bytes()
    with pytest.raises(UserError, match="does not exist in FashionMNIST"):
        gp_train_binary_corrupted.main([*base, "--classes", "0", "12"])
    with pytest.raises(UserError, match="pass --n_train 1"):
        gp_train_binary_corrupted.main([*base, "--n_train", "30", "--memory_gib", "1e-7"])
    # 10⁷ points need 6.4 PB of n×n matrices: over any machine's available memory (the default)
    with pytest.raises(UserError, match="80% of the memory available"):
        gp_train_binary_corrupted.main([*base, "--n_train", "10000000"])
    with pytest.raises(UserError, match="only 40 images"):
        gp_train_binary_corrupted.main([*base, "--classes", "0", "1", "--n_train", "41"])
    assert (root / "binary" / "bin_model_corrupted0.json").read_bytes() == before
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in (root / "prepared").iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    np.save(broken / "shuffled_train_y.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(UserError, match="shuffled_train_y has shape"):
        gp_train_one_vs_all.main(["--data_dir", str(broken), "--dir", str(tmp_path), *FAST])
    np.save(broken / "shuffled_train_y.npy", np.full(200, 10, dtype=np.int64))
    with pytest.raises(UserError, match="labels in \\[10, 10\\]"):
        gp_train_one_vs_all.main(["--data_dir", str(broken), "--dir", str(tmp_path), *FAST])


def test_command_line_exit_status(prepared):
    root, _ = prepared
    script = gp_train_binary_corrupted.__file__
    argv = ["--data_dir", str(root / "prepared"), "--dir", str(root / "x"), "--classes", "0", "0"]
    done = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --classes needs two different classes"
