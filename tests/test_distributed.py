"""Runs over 2 Gloo processes on the CPU equal the one-process runs.

Data-parallel SGD with a global batch split in shards has the gradient of the whole batch
(swag/distributed.py), so a BN-free LeNet5 trained for 2 epochs under torchrun must match one
process to float32 rounding (the gradients are summed in another order): weights and SWAG
moments. A run stopped after epoch 1 resumes in one process and still matches. The model
average split over 2 processes matches one process, draw for draw. Bad launches and a process
killed mid-run stop with one sentence and leave the written checkpoints loadable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, write_mnist_format

from experiments.train import eval_multiswag, run_swag
from swag import data, training
from swag.errors import UserError
from swag.transforms import InputPreset

TRAIN = REPO_ROOT / "experiments" / "train" / "run_swag.py"
EVAL = REPO_ROOT / "experiments" / "train" / "eval_multiswag.py"
TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # float32 rounding after 2 epochs of summation order


def train_args(out: Path, data_path: Path, *extra: str) -> list[str]:
    return [
        "--dir", str(out), "--data_path", str(data_path), "--dataset", "FashionMNIST",
        "--model", "LeNet5", "--use_test", "--batch_size", "32", "--lr_init", "0.05",
        "--device", "cpu", "--epochs", "2", "--save_freq", "1", "--swag", "--swag_start", "1",
        "--swag_lr", "0.01", "--cov_mat", "--eval_freq", "1", *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(**extra: str) -> dict:
    """This process's environment for a child: the checkout first, one thread, `extra` set."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "SWAG_FAULT")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def torchrun(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script),
               *args]  # fmt: skip
    result = subprocess.run(command, env=environment(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def launch_ranks(script: Path, args: list[str], port: int) -> list[subprocess.Popen]:
    """The 2 processes torchrun would start, without its agent (which stops the survivors)."""
    return [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env=environment(
                RANK=str(r),
                LOCAL_RANK=str(r),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            ),  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]


def state(path: Path) -> dict[str, torch.Tensor]:
    return training.load_checkpoint(path)["state_dict"]


def assert_same_state(got: Path, expected: Path) -> None:
    got, expected = state(got), state(expected)
    assert list(got) == list(expected)  # the one-process names: no `module.` prefix
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].double(), value.double(), **TOLERANCE, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same LeNet5 SWAG run in one process and over 2 processes under torchrun."""
    root = tmp_path_factory.mktemp("dist")
    tiny = write_mnist_format(
        root / "data", n_train=201, n_test=40
    )  # last batch 9: shards of 5 and 4
    assert run_swag.main(train_args(root / "one", tiny.data_path)) == 0
    torchrun(TRAIN, train_args(root / "two", tiny.data_path))
    return root, tiny.data_path


def test_data_parallel_training_equals_one_process(runs):
    root, _ = runs
    for name in ("checkpoint-1.pt", "checkpoint-2.pt", "swag-2.pt"):
        assert_same_state(root / "two" / name, root / "one" / name)
    # Rank 0 alone wrote the log; its training loss is the global average.
    one, two = ((root / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two"))
    assert len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert json.loads(b)["tr_loss"] == pytest.approx(json.loads(a)["tr_loss"], rel=1e-5)


def test_resume_in_one_process_from_a_two_process_checkpoint(runs):
    root, data_path = runs
    resume = ["--resume", str(root / "two" / "checkpoint-1.pt")]
    assert run_swag.main(train_args(root / "resumed", data_path, *resume)) == 0
    for name in ("checkpoint-2.pt", "swag-2.pt"):
        assert_same_state(root / "resumed" / name, root / "one" / name)


def test_model_average_split_over_two_processes_equals_one_process(runs):
    root, data_path = runs
    members = [str(root / d / "swag-2.pt") for d in ("one", "two")]

    def args(out: str) -> list[str]:
        return [
            "--savedir", str(root / out), "--method", "multiswag", "--model", "LeNet5",
            "--dataset", "FashionMNIST", "--data_path", str(data_path), "--use_test",
            "--swag_samples", "3", "--device", "cpu", "--seed", "3", "--swag_ckpts", *members,
        ]  # fmt: skip

    assert eval_multiswag.main(args("eval_one")) == 0
    ranks = launch_ranks(EVAL, args("eval_two"), free_port())
    for process in ranks:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    one = np.load(root / "eval_one" / "multiswag_probs.npz")
    two = np.load(root / "eval_two" / "multiswag_probs.npz")
    np.testing.assert_allclose(two["predictions"], one["predictions"], rtol=1e-6, atol=1e-7)
    curves = [json.loads((root / d / "multiswag.json").read_text())["curves"]
              for d in ("eval_one", "eval_two")]  # fmt: skip
    assert curves[1]["clean"][-1]["nll"] == pytest.approx(curves[0]["clean"][-1]["nll"], 1e-6)


def test_a_killed_process_stops_the_other_with_a_sentence(runs, tmp_path):
    _, data_path = runs
    out = tmp_path / "killed"
    args = train_args(out, data_path, "--epochs", "500")
    ranks = launch_ranks(TRAIN, args, free_port())
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-1.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks[1].send_signal(signal.SIGKILL)  # mid-run: rank 0 waits on it in the next all-reduce
    assert ranks[0].wait(timeout=300) == 2
    lines = ranks[0].stderr.read().strip().splitlines()
    assert lines[-1].startswith("error: process 0 of 2 lost contact with another process")
    assert "Traceback" not in "\n".join(lines)
    assert not list(out.glob(".*.partial"))
    newest = max(out.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    assert training.load_checkpoint(newest)["epoch"] >= 1
    ranks[1].wait()


@pytest.mark.parametrize(
    "world, extra, message",
    [
        ("2", ["--batch_size", "33"], "--batch_size 33 is not divisible by the 2 processes"),
        ("1", ["--dist_backend", "nccl"], "--dist_backend nccl needs CUDA GPUs"),
        ("2", ["--sync_bn"], "--sync_bn needs GPUs"),
    ],
)
def test_bad_launches_stop_before_writing(runs, tmp_path, monkeypatch, world, extra, message):
    if torch.cuda.is_available() and extra[0] != "--batch_size":
        pytest.skip("a GPU is visible")
    _, data_path = runs
    monkeypatch.setenv("WORLD_SIZE", world)  # what torchrun sets; checked at parse time
    with pytest.raises(UserError, match=message):
        run_swag.main([*train_args(tmp_path / "bad", data_path), *extra])
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("kind", ["fast", "torchvision"])
def test_shards_interleave_into_the_one_process_batches(runs, kind):
    _, data_path = runs
    preset = InputPreset((0.5,), (0.5,), crop_padding=2, hflip=True)  # augmented
    loaders, _ = data.loaders("FashionMNIST", data_path, 32, 0, preset, use_validation=False,
                              loader=kind, seed=4)  # fmt: skip
    whole = loaders["train"]
    shards = [whole.shard(r, 2) for r in range(2)]
    assert whole.shard(0, 1) is whole
    for loader in (whole, *shards):
        loader.set_epoch(3)
    for batch, part0, part1 in zip(whole, *shards, strict=True):
        assert torch.equal(batch[1][0::2], part0[1]) and torch.equal(batch[1][1::2], part1[1])
        if kind == "fast":  # the same crops and flips (torchvision: per-worker draws)
            assert torch.equal(batch[0][0::2], part0[0]) and torch.equal(batch[0][1::2], part1[0])
