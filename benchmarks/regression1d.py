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


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


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
        _, seconds = timed(lambda: [hmc(dataclasses.replace(c, **tiny)) for c in (feb, dec)])
        _, more = timed(lambda: ensemble_run(dataclasses.replace(ensemble, num_steps=1)))
        print(f"compilation: {seconds + more:.1f} s")

    result, seconds = timed(lambda: hmc(feb))
    print(
        f"HMC 2020-02, {feb.num_chains} chains x {feb.num_samples} x {feb.num_leapfrog}: "
        f"{seconds:.1f} s (target < 15 s), acceptance {result.acceptance.mean():.3f}"
    )

    trajectories = dec.burn + dec.num_samples if args.full else args.trajectories
    short = dataclasses.replace(dec, burn=0, num_samples=trajectories)
    _, pretrain = timed(lambda: hmc(dataclasses.replace(short, num_samples=1, num_leapfrog=1)))
    result, seconds = timed(lambda: hmc(short))
    per_trajectory = (seconds - pretrain) / trajectories
    total = pretrain + per_trajectory * (dec.burn + dec.num_samples)
    print(
        f"HMC 2020-12, {dec.num_chains} chains: pre-training {pretrain:.1f} s, "
        f"{per_trajectory:.2f} s per {dec.num_leapfrog}-step trajectory "
        f"({per_trajectory / dec.num_leapfrog * 1e3:.2f} ms per batched leapfrog step); "
        f"500 trajectories {'took' if args.full else '~'} {total / 60:.1f} min (target < 10), "
        f"acceptance {result.acceptance.mean():.3f}"
    )

    _, seconds = timed(lambda: ensemble_run(ensemble))
    print(
        f"deep ensemble, {args.members} members x {ensemble.num_steps} steps: {seconds:.1f} s "
        "(target < 60 s for 50)"
    )
    print(f"load average after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
