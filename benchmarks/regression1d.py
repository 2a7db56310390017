"""Speed of the 1-D regression methods against the issue's targets (2 CPU cores).

Targets: HMC "2020-02" (200 chains x 200 samples x 10 leapfrog steps) < 15 s; HMC "2020-12"
(200 chains x 500 trajectories x 1000 steps) < 10 min; 50 deep-ensemble members x 20,000
steps < 60 s. The original took 1.28 ms per leapfrog step for one chain (200 chains of 2020-12
≈ 36 h) and 18.9 s per ensemble member (15.8 min for 50). The 2020-12 run is timed over
--trajectories trajectories and extrapolated to 500 unless --full. Times include the 3000-step
SGD pre-training of the chains; the load average is printed because the cores may be shared.

    python benchmarks/regression1d.py --compile
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402

from swag import regression1d  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "experiments" / "deep_ensembles" / "data.npz"


class Clock:
    """Wall and process CPU seconds of one call; with one thread, CPU seconds approximate the
    wall time on an idle core when other jobs share the machine."""

    def __init__(self, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        self.out = fn()
        self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu

    def __str__(self) -> str:
        return f"{self.wall:.1f} s wall ({self.cpu:.1f} s CPU)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="torch.compile the gradients")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trajectories", type=int, default=3, help="2020-12 trajectories timed")
    parser.add_argument("--full", action="store_true", help="run all 500 2020-12 trajectories")
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = regression1d.load_data(DATA, args.device)
    print(
        f"threads {args.threads}, compile {args.compile}, device {args.device}, "
        f"load average before {os.getloadavg()[0]:.1f}"
    )

    feb = regression1d.get_config("2020-02").hmc
    dec = regression1d.get_config("2020-12").hmc
    ensemble = regression1d.EnsembleConfig()

    def hmc(config: regression1d.HMCConfig):
        return regression1d.run_hmc(config, data, compile=args.compile)

    def ensemble_run(config: regression1d.EnsembleConfig):
        return regression1d.run_ensemble(config, data, args.members, compile=args.compile)

    if args.compile:  # compile every graph on tiny runs first: the timings exclude compilation
        tiny = {"num_samples": 1, "pretrain_steps": 1, "num_leapfrog": 1}
        clocks = [Clock(lambda c=c: hmc(dataclasses.replace(c, **tiny))) for c in (feb, dec)]
        clocks.append(Clock(lambda: ensemble_run(dataclasses.replace(ensemble, num_steps=1))))
        print(f"compilation: {sum(c.wall for c in clocks):.1f} s wall")

    clock = Clock(lambda: hmc(feb))
    print(
        f"HMC 2020-02, {feb.num_chains} chains x {feb.num_samples} x {feb.num_leapfrog}: "
        f"{clock} (target < 15 s), acceptance {clock.out.acceptance.mean():.3f}"
    )

    trajectories = dec.burn + dec.num_samples if args.full else args.trajectories
    short = dataclasses.replace(dec, burn=0, num_samples=trajectories)
    pretrain = Clock(lambda: hmc(dataclasses.replace(short, num_samples=1, num_leapfrog=1)))
    clock = Clock(lambda: hmc(short))
    for kind in ("wall", "cpu"):
        per_trajectory = (getattr(clock, kind) - getattr(pretrain, kind)) / trajectories
        total = getattr(pretrain, kind) + per_trajectory * (dec.burn + dec.num_samples)
        print(
            f"HMC 2020-12, {dec.num_chains} chains, {kind} time: pre-training "
            f"{getattr(pretrain, kind):.1f} s, {per_trajectory:.2f} s per {dec.num_leapfrog}-step "
            f"trajectory ({per_trajectory / dec.num_leapfrog * 1e3:.2f} ms per batched leapfrog "
            f"step); 500 trajectories {'took' if args.full else '~'} {total / 60:.1f} min "
            f"(target < 10), acceptance {clock.out.acceptance.mean():.3f}"
        )

    clock = Clock(lambda: ensemble_run(ensemble))
    print(
        f"deep ensemble, {args.members} members x {ensemble.num_steps} steps: {clock} "
        "(target < 60 s for 50)"
    )
    print(f"load average after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
