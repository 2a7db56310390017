"""Fault injection: kills at every write boundary, full disks, reused and shared folders, bad
flag values and damaged input files, against run_swag.py, eval_multiswag.py and make_cifar_c.py.

Kills and full disks use the test-only hook of swag/io.py (SWAG_FAULT = kill@n, killmid@n,
enospc@n) in forked children, so a probe costs a fraction of a second; one slow test sends real
SIGKILLs at random moments, and one mounts a real 1 MiB tmpfs where the machine allows it.
Every probe asserts what must hold: the run resumes from its newest checkpoint to the same
result as an uninterrupted run, errors are one line `error: ...` with exit status 2, no
temporary file is left and nothing written before is lost.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_mnist_format
from test_eval_multiswag import _script

import swag.io
from swag.errors import UserError
from swag.io import PARTIAL_SUFFIX, locked_directory
from swag.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return write_mnist_format(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=32)


def train_args(out: Path, data_path: Path, *extra: str) -> list[str]:
    return [
        "--dir", str(out), "--data_path", str(data_path), "--dataset", "FashionMNIST",
        "--model", "LeNet5", "--use_test", "--batch_size", "16", "--lr_init", "0.05",
        "--device", "cpu", "--epochs", str(EPOCHS), "--save_freq", "1", "--swag",
        "--swag_start", "1", "--swag_lr", "0.01", "--cov_mat", "--eval_freq", "1", *extra,
    ]  # fmt: skip


def _child(script: str, args: list[str], fault: str | None) -> None:
    if fault:
        os.environ["SWAG_FAULT"] = fault
    swag.io._writes = 0  # count this run's writes, not those the parent made before forking
    torch.set_num_threads(1)
    module = _cifar_c_module() if script == "make_cifar_c" else _script(script)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            status = module.main(args)
        except UserError:
            os._exit(2)
        except SystemExit as error:
            os._exit(error.code if isinstance(error.code, int) else 1)
        except BaseException:  # a traceback: the probe failed
            os._exit(3)
    os._exit(status or 0)


def run_forked(script: str, args: list[str], fault: str | None = None) -> int:
    """Run a driver's main(args) in a forked child (torch already imported); its exit code."""
    process = multiprocessing.get_context("fork").Process(target=_child, args=(script, args, fault))
    process.start()
    process.join(300)
    return process.exitcode


def final_state(out: Path) -> dict[str, torch.Tensor]:
    swag = load_checkpoint(out / f"swag-{EPOCHS}.pt")["state_dict"]
    model = load_checkpoint(out / f"checkpoint-{EPOCHS}.pt")["state_dict"]
    return {**{f"swag.{k}": v for k, v in swag.items()}, **model}


def newest_checkpoint(out: Path) -> Path | None:
    checkpoints = sorted(out.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def resume_after_fault(out: Path, data_path: Path) -> None:
    """What a user does after a kill: resume from the newest checkpoint (or start again)."""
    newest = newest_checkpoint(out)
    extra = ["--resume", str(newest)] if newest else []
    assert run_forked("run_swag", train_args(out, data_path, *extra)) == 0
    assert not list(out.glob(f".*{PARTIAL_SUFFIX}"))


@pytest.fixture(scope="module")
def reference(fmnist, tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run_forked("run_swag", train_args(out, fmnist.data_path)) == 0
    return out


@pytest.fixture(scope="module")
def writes(fmnist, tmp_path_factory) -> int:
    """The number of writes of one run: the first n at which a kill@n no longer fires."""
    scratch, n = tmp_path_factory.mktemp("count"), 1
    while run_forked("run_swag", train_args(scratch / f"{n}", fmnist.data_path), f"kill@{n}"):
        n += 1
    return n - 1


def check_kills(probes: list[str], fmnist, reference, tmp_path) -> None:
    """Each probe kills a run once; resuming from the newest checkpoint must finish it with
    exactly the uninterrupted run's final weights, SWAG moments and metrics rows."""
    expected = final_state(reference)
    for fault in probes:
        out = tmp_path / fault.replace("@", "_") / "run"
        assert run_forked("run_swag", train_args(out, fmnist.data_path), fault) == 137, fault
        resume_after_fault(out, fmnist.data_path)
        got = final_state(out)
        for key, value in expected.items():
            assert torch.equal(got[key], value), (fault, key)
        rows = (out / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["ep"] for r in rows] == list(range(1, EPOCHS + 1)), fault


def test_kills_at_representative_write_boundaries(fmnist, reference, tmp_path):
    # killmid@1: inside the first SWAG file; kill@2: between checkpoint-0 and command.sh;
    # killmid@5: inside the first metrics row; kill@6: between an epoch's SWAG file and its
    # checkpoint (the two halves of one epoch's state).
    check_kills(["killmid@1", "kill@2", "killmid@5", "kill@6"], fmnist, reference, tmp_path)


@pytest.mark.slow
def test_a_kill_at_every_write_boundary_resumes_to_the_same_result(
    fmnist, reference, writes, tmp_path
):
    assert writes >= 3 * EPOCHS + 4  # swag, checkpoint and a metrics row per epoch, and more
    probes = [f"{fault}@{n}" for n in range(1, writes + 1) for fault in ("killmid", "kill")]
    check_kills(probes, fmnist, reference, tmp_path)


def check_full_disks(counts: range | list[int], fmnist, tmp_path) -> None:
    for n in counts:
        out = tmp_path / f"enospc{n}" / "run"
        assert run_forked("run_swag", train_args(out, fmnist.data_path), f"enospc@{n}") == 2
        assert not list(out.glob(f".*{PARTIAL_SUFFIX}")), n
        for path in out.glob("*.pt"):  # everything finished before is intact
            load_checkpoint(path)
        resume_after_fault(out, fmnist.data_path)


def test_a_full_disk_at_representative_writes(fmnist, tmp_path):
    check_full_disks([1, 5, 7], fmnist, tmp_path)  # a SWAG file, a metrics row, a checkpoint


@pytest.mark.slow
def test_a_full_disk_in_every_write_is_one_sentence_and_loses_nothing(fmnist, writes, tmp_path):
    check_full_disks(range(1, writes + 1), fmnist, tmp_path)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_same_result(fmnist, reference, tmp_path):
    expected = final_state(reference)
    script = ROOT / "experiments" / "train" / "run_swag.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rng = random.Random(0)
    for probe in range(3):
        out = tmp_path / f"sigkill{probe}" / "run"
        args = [sys.executable, str(script), *train_args(out, fmnist.data_path)]
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(3.0, 12.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        resume_after_fault(out, fmnist.data_path)
        got = final_state(out)
        assert all(torch.equal(got[k], v) for k, v in expected.items()), probe


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), where the machine lets the tests mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_for_training_evaluation_and_cifar_c(
    fmnist, reference, small_disk, tmp_path
):
    # Training: a LeNet5 checkpoint (1.7 MB) does not fit in 1 MiB.
    out = small_disk / "run"
    assert run_forked("run_swag", train_args(out, fmnist.data_path)) == 2
    assert not list(out.glob(f".*{PARTIAL_SUFFIX}"))
    # Evaluation with --cache_probs: the cache is reserved up front, so no bus error.
    shutil.rmtree(out)
    evaluation = [
        "--savedir", str(small_disk / "eval"), "--model", "LeNet5", "--dataset", "FashionMNIST",
        "--data_path", str(fmnist.data_path), "--use_test", "--device", "cpu",
        "--swag_samples", "3000", "--cache_probs",
        "--swag_ckpts", str(reference / f"swag-{EPOCHS}.pt"),
    ]  # fmt: skip
    assert run_forked("eval_multiswag", evaluation) == 2
    assert not list((small_disk / "eval").rglob(f".*{PARTIAL_SUFFIX}"))


def test_reused_and_shared_folders(fmnist, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = (out / "metrics.jsonl").read_text()
    assert run_forked("run_swag", train_args(out, fmnist.data_path)) == 2  # another run's folder
    assert (out / "metrics.jsonl").read_text() == before
    with locked_directory(out):  # a second process at the same time
        assert run_forked("run_swag", train_args(out, fmnist.data_path, "--overwrite")) == 2
    assert (out / "metrics.jsonl").read_text() == before
    assert run_forked("run_swag", train_args(out, fmnist.data_path, "--overwrite")) == 0
    file = tmp_path / "a_file"
    file.write_text("x")
    assert run_forked("run_swag", train_args(file, fmnist.data_path)) == 2
    evaluation = ["--model", "LeNet5", "--dataset", "FashionMNIST", "--data_path",
                  str(fmnist.data_path), "--use_test", "--device", "cpu"]  # fmt: skip
    ok = [
        *evaluation,
        "--savedir",
        str(tmp_path / "eval"),
        "--swag_ckpts",
        str(out / f"swag-{EPOCHS}.pt"),
    ]
    assert run_forked("eval_multiswag", [*ok, "--swag_samples", "1"]) == 0
    record = (tmp_path / "eval" / "eval_command.sh").read_text()
    bad = [*evaluation, "--savedir", str(tmp_path / "eval"), "--swag_ckpts", str(file)]
    assert run_forked("eval_multiswag", bad) == 2
    assert (tmp_path / "eval" / "eval_command.sh").read_text() == record
    into_file = ["--savedir", str(file), "--swag_ckpts", str(out / f"swag-{EPOCHS}.pt")]
    assert run_forked("eval_multiswag", [*evaluation, *into_file]) == 2
    cifar_c = ["--datapath", str(tmp_path), "--savepath", str(file), "--corruptions", "fog"]
    assert run_forked("make_cifar_c", cifar_c) == 2


BAD_VALUES = {
    "run_swag": {
        "--batch_size": ["0", "-1", "x"], "--epochs": ["0"], "--save_freq": ["0"],
        "--eval_freq": ["0"], "--lr_init": ["-1", "0", "nan"], "--momentum": ["1", "-0.1"],
        "--wd": ["-1"], "--prior_var": ["0", "-1"], "--swag_start": ["0"], "--swag_lr": ["0"],
        "--swag_c_epochs": ["0"], "--max_num_models": ["-3"], "--num_workers": ["-1"],
        "--threads": ["0"], "--seed": ["-1"], "--split_classes": ["2"],
    },
    "eval_multiswag": {
        "--swag_samples": ["0"], "--max_num_models": ["-1"], "--scale": ["0", "-1"],
        "--bn_subset": ["0"], "--eval_batch_size": ["0"], "--severities": ["0", "6"],
        "--batch_size": ["0"], "--seed": ["-2"],
    },
    "make_cifar_c": {
        "--workers": ["0"], "--limit": ["0"], "--severities": ["0", "7"], "--seed": ["-1"],
    },
}  # fmt: skip


def _base(script: str, tmp_path: Path, fmnist) -> list[str]:
    if script == "run_swag":
        return train_args(tmp_path / "out", fmnist.data_path)
    if script == "eval_multiswag":
        return ["--savedir", str(tmp_path / "out"), "--model", "LeNet5", "--data_path",
                str(fmnist.data_path), "--swag_ckpts", str(tmp_path / "x.pt")]  # fmt: skip
    return ["--datapath", str(tmp_path), "--savepath", str(tmp_path / "out")]


@pytest.mark.parametrize(
    "script,flag,value",
    [(s, f, v) for s, flags in BAD_VALUES.items() for f, values in flags.items() for v in values],
)
def test_bad_flag_values_are_refused_before_anything_is_written(
    script, flag, value, tmp_path, fmnist, capsys
):
    args = _base(script, tmp_path, fmnist)
    args = args[:] + [flag, value]
    module = _cifar_c_module() if script == "make_cifar_c" else _script(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: argument") and flag in lines[0]
    assert not (tmp_path / "out").exists()


def _cifar_c_module():
    import importlib

    return importlib.import_module("ubdl_data.make_cifar_c")


def damaged_files(folder: Path) -> dict[str, Path]:
    """Zero-byte, truncated, object-array and pickled-code files of every input kind."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"empty.npy": b"", "empty.npz": b"", "empty.pt": b""}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    np.save(folder / "full.npy", np.zeros(64, dtype=np.int64))
    (folder / "truncated.npy").write_bytes((folder / "full.npy").read_bytes()[:100])
    np.save(folder / "object.npy", np.array([{"a": 1}] * 64, dtype=object), allow_pickle=True)
    np.savez(folder / "full.npz", data=np.zeros((32, 28, 28), np.uint8), labels=np.zeros(32))
    (folder / "truncated.npz").write_bytes((folder / "full.npz").read_bytes()[:200])
    torch.save({"epoch": 1}, folder / "full.pt")
    (folder / "truncated.pt").write_bytes((folder / "full.pt").read_bytes()[:50])
    return {p.name: p for p in folder.iterdir()}


def test_damaged_input_files_are_one_sentence_naming_the_file(fmnist, reference, tmp_path):
    files = damaged_files(tmp_path / "damaged")
    train = train_args(tmp_path / "run", fmnist.data_path)
    evaluation = ["--savedir", str(tmp_path / "eval"), "--model", "LeNet5", "--dataset",
                  "FashionMNIST", "--data_path", str(fmnist.data_path), "--use_test",
                  "--device", "cpu", "--swag_samples", "1"]  # fmt: skip
    probes = [("run_swag", [*train, "--label_arr", str(files[n])], files[n])
              for n in ("empty.npy", "truncated.npy", "object.npy", "full.npz")]  # fmt: skip
    probes += [("run_swag", [*train, "--resume", str(files[n])], files[n])
               for n in ("empty.pt", "truncated.pt", "full.pt", "full.npy")]  # fmt: skip
    probes += [("eval_multiswag", [*evaluation, "--swag_ckpts", str(files[n])], files[n])
               for n in ("empty.pt", "truncated.pt", "full.pt")]  # fmt: skip
    for name in ("empty.npz", "truncated.npz"):
        shifted = tmp_path / f"shifted_{name}"
        shifted.mkdir()
        shutil.copy(files[name], shifted / "fog_1.npz")
        args = [*evaluation, "--corrupted_path", str(shifted), "--swag_ckpts",
                str(reference / f"swag-{EPOCHS}.pt")]  # fmt: skip
        probes.append(("eval_multiswag", args, shifted / "fog_1.npz"))
    for script, args, damaged in probes:
        with pytest.raises(UserError) as error:
            _script(script).main(args)
        assert str(damaged) in str(error.value), (script, damaged, str(error.value))
        assert "\n" not in str(error.value)
    assert not (tmp_path / "eval" / "eval_command.sh").exists()  # no evaluation was recorded
