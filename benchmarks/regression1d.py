"""Speed of the 1-D regression methods against the issue's targets (2 CPU cores).

Targets: HMC "2020-02" (200 chains x 200 samples x 10 leapfrog steps) < 15 s; HMC "2020-12"
(200 chains x 500 trajectories x 1000 steps) < 10 min; 50 deep-ensemble members x 20,000
steps < 60 s. The original took 1.28 ms per leapfrog step for one chain (200 chains of 2020-12
≈ 36 h) and 18.9 s per ensemble member (15.8 min for 50). The 2020-12 run is timed over
--trajectories trajectories and extrapolated to 500 unless --full. HMC times include the
3000-step SGD pre-training of the chains. Every figure is printed with wall and process CPU
time and the 1-minute load average, because other jobs may share the cores: with --threads 1,
CPU time approximates the wall time on an idle core.

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

from experiments.deep_ensembles import regression1d  # noqa: E402
from swag.models.regression_net import RegressionNet  # noqa: E402
from swag.posteriors.flat import FlatModel
from swag.posteriors.hmc import gaussian_log_posterior, hmc  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "experiments" / "deep_ensembles" / "data.npz"


class Clock:
    """Wall and process CPU seconds of one call, and the load average when it ended."""

    def __init__(self, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        self.out = fn()
        self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.load = os.getloadavg()[0]

    def __str__(self) -> str:
        return f"{self.wall:.1f} s wall, {self.cpu:.1f} s CPU, load {self.load:.1f}"


def leapfrog_costs(data: regression1d.Regression1DData, chains: int, steps: int) -> None:
    """ms per batched leapfrog step of the 2020-12 target for each gradient path."""
    config = regression1d.get_config("2020-12").hmc
    flat = FlatModel(RegressionNet().to(data.inputs.device))
    starts = torch.randn(chains, flat.dim, generator=torch.Generator().manual_seed(0)) * 0.3
    starts = starts.to(data.inputs.device)
    for hand, compile in ((False, False), (False, True), (True, False), (True, True)):
        log_prob = gaussian_log_posterior(
            flat, data.inputs, data.targets, config.noise_var, config.prior_var,
            hand_gradient=hand,
        )  # fmt: skip

        def run(num_steps: int, log_prob=log_prob, compile=compile):
            return hmc(log_prob, starts, 1e-6, num_steps, 1, compile=compile)

        warm = Clock(lambda: run(1))  # includes compilation
        # The difference of two runs cancels the per-run overhead (and the autograd path's
        # compilation, which `hmc` redoes on every call).
        short, clock = Clock(lambda: run(1)), Clock(lambda: run(steps + 1))
        per_step = [(getattr(clock, k) - getattr(short, k)) / steps * 1e3 for k in ("wall", "cpu")]
        print(
            f"  {'hand-written' if hand else 'autograd'} gradient, compile {compile}: "
            f"{per_step[0]:.2f} ms wall, {per_step[1]:.2f} ms CPU per step (load "
            f"{clock.load:.1f}); first call {warm.wall:.1f} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="torch.compile the gradients")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trajectories", type=int, default=3, help="2020-12 trajectories timed")
    parser.add_argument("--full", action="store_true", help="run all 500 2020-12 trajectories")
    parser.add_argument("--members", type=int, default=50, help="0: skip the deep ensemble")
    parser.add_argument("--paths", type=int, default=0, help="compare gradient paths over N steps")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = regression1d.load_data(DATA, args.device)
    print(
        f"threads {args.threads}, compile {args.compile}, device {args.device}, "
        f"load average before {os.getloadavg()[0]:.1f}"
    )
    if args.paths:
        print(f"2020-12 target, 200 chains, {args.paths} leapfrog steps per path:")
        leapfrog_costs(data, 200, args.paths)

    feb = regression1d.get_config("2020-02").hmc
    dec = regression1d.get_config("2020-12").hmc
    ensemble = regression1d.EnsembleConfig()

    def hmc_run(config: regression1d.HMCConfig):
        return regression1d.run_hmc(config, data, compile=args.compile)

    def ensemble_run(config: regression1d.EnsembleConfig):
        return regression1d.run_ensemble(config, data, args.members, compile=args.compile)

    if args.compile:  # compile every graph on tiny runs first: the timings exclude compilation
        tiny = {"num_samples": 1, "pretrain_steps": 1, "num_leapfrog": 1}
        clocks = [Clock(lambda c=c: hmc_run(dataclasses.replace(c, **tiny))) for c in (feb, dec)]
        if args.members:
            clocks.append(Clock(lambda: ensemble_run(dataclasses.replace(ensemble, num_steps=1))))
        print(f"compilation: {sum(c.wall for c in clocks):.1f} s wall")

    clock = Clock(lambda: hmc_run(feb))
    print(
        f"HMC 2020-02, {feb.num_chains} chains x {feb.num_samples} x {feb.num_leapfrog}: "
        f"{clock} (target < 15 s), acceptance {clock.out.acceptance.mean():.3f}"
    )

    trajectories = dec.burn + dec.num_samples if args.full else args.trajectories
    short = dataclasses.replace(dec, burn=0, num_samples=trajectories)
    pretrain = Clock(lambda: hmc_run(dataclasses.replace(short, num_samples=1, num_leapfrog=1)))
    clock = Clock(lambda: hmc_run(short))
    for kind in ("wall", "cpu"):
        per_trajectory = (getattr(clock, kind) - getattr(pretrain, kind)) / trajectories
        total = getattr(pretrain, kind) + per_trajectory * (dec.burn + dec.num_samples)
        print(
            f"HMC 2020-12, {dec.num_chains} chains, {kind} time: pre-training "
            f"{getattr(pretrain, kind):.1f} s, {per_trajectory:.2f} s per {dec.num_leapfrog}-step "
            f"trajectory ({per_trajectory / dec.num_leapfrog * 1e3:.2f} ms per batched leapfrog "
            f"step); 500 trajectories {'took' if args.full else '~'} {total / 60:.1f} min "
            f"(target < 10), acceptance {clock.out.acceptance.mean():.3f}, load {clock.load:.1f}"
        )

    if args.members:
        clock = Clock(lambda: ensemble_run(ensemble))
        print(
            f"deep ensemble, {args.members} members x {ensemble.num_steps} steps: {clock} "
            "(target < 60 s for 50)"
        )
    print(f"load average after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
