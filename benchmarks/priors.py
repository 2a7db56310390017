"""Prior predictive of S weight draws on N images: the original notebooks' loop vs ours.

    python benchmarks/priors.py --samples 500 --images 1000 --timed_samples 20

"loop" is what the original priors notebooks did: for each sample, redraw every parameter
N(0, α²) in place and run one forward of the N images (BN in train mode). "ours" is
`swag.priors.prior_predictive`: stacked draws through `functional_call` under `vmap`, chunked
to --memory_budget bytes. Both sides run in the same invocation, each in a fresh child process
(so each has its own peak RSS), with the same generator seed, and the outputs are checked to
agree. With --timed_samples k < S, both sides time k samples and the totals are extrapolated
by S/k (cost is linear in S for both, after a warm-up call that is not timed). "loop_cl" is
the same loop in channels_last memory format, a stronger CPU baseline.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from swag import priors, speed  # noqa: E402
from swag.io import atomic_write_text  # noqa: E402
from swag.models import get_model  # noqa: E402

SHAPES = {"LeNet5": (1, 28, 28), "PreResNet20": (3, 32, 32)}


def loop_outputs(model, inputs, alpha, num_samples, generator, channels_last):
    """The original loop: `resample` then one forward per prior sample."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    model.train()
    outputs = []
    with torch.no_grad():
        for _ in range(num_samples):
            priors.resample_(model, alpha, generator)
            outputs.append(model(inputs))
    return torch.stack(outputs)


def child(side: str, args: argparse.Namespace, name: str, queue) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = get_model(name).build(10)
    inputs = torch.randn(args.images, *SHAPES[name], generator=torch.Generator().manual_seed(1))
    # warm-up (one-time vmap/oneDNN set-up, excluded: the timed cost is then linear in S)
    priors.prior_predictive(model, inputs[:2], args.alpha, 1)
    loop_outputs(model, inputs[:2], args.alpha, 1, None, side == "loop_cl")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    generator = torch.Generator().manual_seed(2)
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    if side == "ours":
        outputs = priors.prior_predictive(
            model, inputs, args.alpha, args.timed_samples, generator,
            memory_budget=args.memory_budget,
        )  # fmt: skip
    else:
        outputs = loop_outputs(
            model, inputs, args.alpha, args.timed_samples, generator, side == "loop_cl"
        )
    wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(dict(wall=wall, cpu=cpu, peak_gib=peak / 2**20, outputs=outputs[:3].numpy(),
                   above_baseline_gib=(peak - baseline) / 2**20))  # fmt: skip


def run_side(side: str, args: argparse.Namespace, name: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(side, args, name, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=500, help="S, prior samples")
    parser.add_argument("--images", type=int, default=1000, help="N, inputs per forward")
    parser.add_argument("--timed_samples", type=int, default=None, help="time k ≤ S samples")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--memory_budget", type=int, default=priors.DEFAULT_MEMORY_BUDGET)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.timed_samples = min(args.timed_samples or args.samples, args.samples)
    scale = args.samples / args.timed_samples
    rows, results = [], []
    for name in args.models:
        load_before = speed.load_average()
        sides = {side: run_side(side, args, name) for side in ("loop", "loop_cl", "ours")}
        for side in ("loop_cl", "ours"):
            reference = sides["loop"]["outputs"]
            error = float(abs(sides[side]["outputs"] - reference).max() / abs(reference).max())
            sides[side]["max_rel_difference"] = error
        for side, result in sides.items():
            result.pop("outputs")
            speedup = sides["loop"]["wall"] / result["wall"]
            rows.append([name, side, scale * result["wall"], scale * result["cpu"], speedup,
                         result["peak_gib"], result["above_baseline_gib"]])  # fmt: skip
            results.append({"model": name, "side": side, "speedup_vs_loop": speedup, **result})
        print(f"{name}: load average {load_before:.2f} before, {speed.load_average():.2f} after")
    headers = ["model", "side", f"wall s (S={args.samples})", "CPU s", "speed-up vs loop",
               "peak RSS GiB", "above inputs GiB"]  # fmt: skip
    print(tabulate(rows, headers, floatfmt=".3g"))
    print(f"S={args.samples} (timed {args.timed_samples}), N={args.images}, threads "
          f"{args.threads}, budget {args.memory_budget:,} B, {os.cpu_count()} CPUs")  # fmt: skip
    if args.out:
        payload = {"args": vars(args), "results": results, "load_average": speed.load_average()}
        atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
