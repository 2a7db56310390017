"""Distance of the deep ensemble's and VI's predictive distributions to HMC's (1-D regression).

Runs HMC, the deep ensemble and mean-field VI of a named setting (`regression1d.CONFIGS`),
then tabulates the mean over the 100 grid inputs of the 1-D Wasserstein-2 distance between each
method's first k predictive draws and HMC's (k = ensemble members / VI samples), beside the
Monte Carlo floor of k independent HMC draws. Writes to --dir: command.sh, config.json,
predictions.npz (hmc [C, S, 100], ensemble [M, 100], vi [S, 100]), metrics.json (HMC
acceptance and R̂, timings, the table), w2.csv and w2.png.

    python experiments/deep_ensembles/compare.py --config 2020-02 \\
        --dir runs/deep_ensembles/2020-02 --compile
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from experiments.deep_ensembles import regression1d  # noqa: E402
from experiments.deep_ensembles.wasserstein import w2_curves  # noqa: E402
from swag import cli  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_savefig, atomic_write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
COUNTS = [1, 2, 3, 5, 10, 20, 50]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="output directory")
    parser.add_argument("--data", type=Path, default=HERE / "data.npz", help="data.npz to use")
    parser.add_argument("--config", default="2020-02", choices=sorted(regression1d.CONFIGS))
    parser.add_argument("--num_chains", type=int, default=None, help="default: the config's")
    parser.add_argument("--num_samples", type=int, default=None, help="HMC samples per chain")
    parser.add_argument("--num_members", type=int, default=None, help="default: 50")
    parser.add_argument("--ensemble_steps", type=int, default=None, help="default: 20000")
    parser.add_argument("--vi_steps", type=int, default=None, help="default: 10000")
    parser.add_argument("--pretrain_steps", type=int, default=None, help="HMC/VI; default 3000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step_size", type=float, default=None, help="override HMC step size")
    parser.add_argument("--num_leapfrog", type=int, default=None, help="override HMC L")
    parser.add_argument("--burn", type=int, default=None, help="override HMC burn-in")
    parser.add_argument(
        "--mass", default=None, choices=["identity", "ggn"], help="HMC mass matrix (identity)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the gradients")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny matrices)")
    parser.add_argument("--reuse", action="store_true", help="reuse --dir/predictions.npz")
    return parser.parse_args(argv)


def scaled_config(args: argparse.Namespace) -> regression1d.ExperimentConfig:
    """The named config with the command-line overrides (for quick, reduced runs)."""
    config = regression1d.get_config(args.config)
    hmc = config.hmc
    for name in ("step_size", "num_leapfrog"):
        if getattr(args, name) is not None:
            hmc = dataclasses.replace(hmc, **{name: getattr(args, name)})
    if args.num_samples is not None:
        hmc = dataclasses.replace(hmc, num_samples=args.num_samples, burn=min(hmc.burn, 2))
    for name in ("burn", "mass"):
        if getattr(args, name) is not None:
            hmc = dataclasses.replace(hmc, **{name: getattr(args, name)})
    ensemble = config.ensemble
    if args.ensemble_steps is not None:
        ensemble = dataclasses.replace(ensemble, num_steps=args.ensemble_steps)
    vi = config.vi
    if args.vi_steps is not None:
        vi = dataclasses.replace(vi, num_steps=args.vi_steps)
    if args.pretrain_steps is not None:
        hmc = dataclasses.replace(hmc, pretrain_steps=args.pretrain_steps)
        vi = dataclasses.replace(vi, pretrain_steps=args.pretrain_steps)
    return dataclasses.replace(config, hmc=hmc, ensemble=ensemble, vi=vi)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        config = scaled_config(args)
        data = regression1d.load_data(args.data, args.device)
        args.dir.mkdir(parents=True, exist_ok=True)
        words = ["python", "experiments/deep_ensembles/compare.py"]
        words += sys.argv[1:] if argv is None else argv
        (args.dir / "command.sh").write_text(shlex.join(words) + "\n")
        write_json(args.dir / "config.json", {**vars(args), "resolved": dataclasses.asdict(config)})
        predictions_path = args.dir / "predictions.npz"
        if args.reuse and predictions_path.is_file():
            predictions = dict(np.load(predictions_path))
            metrics = json.loads((args.dir / "metrics.json").read_text())
        else:
            run = regression1d.run_experiment(
                config, data, args.num_chains, args.num_members, args.seed, args.compile,
                progress=sys.stderr.isatty(),
            )  # fmt: skip
            predictions = {k: run[k] for k in ("hmc", "ensemble", "vi")}
            regression1d.save_npz(predictions_path, predictions)
            metrics = {"diagnostics": run["diagnostics"], "seconds": run["seconds"]}
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    tensors = {k: torch.as_tensor(v) for k, v in predictions.items()}
    methods = {"deep ensemble": tensors["ensemble"], "mean-field VI": tensors["vi"]}
    curves = w2_curves(tensors["hmc"], methods, COUNTS)
    rows = [[name, *values] for name, values in curves.items()]
    headers = ["mean W2 to HMC, k =", *COUNTS]
    print(f"config {args.config}: HMC {tuple(tensors['hmc'].shape[:2])} chains x samples")
    print(json.dumps(metrics["diagnostics"], indent=None))
    print(tabulate(rows, headers=headers, floatfmt=".4f"))
    metrics["w2"] = {"counts": COUNTS, **curves}
    write_json(args.dir / "metrics.json", metrics)
    csv = [",".join(["method", *map(str, COUNTS)])]
    csv += [",".join([name, *(f"{v:.6f}" for v in values)]) for name, values in curves.items()]
    (args.dir / "w2.csv").write_text("\n".join(csv) + "\n")
    plot(curves, args.dir / "w2.png", f"{args.config}: predictive distance to HMC")
    print(f"wrote {args.dir}")
    return 0


def plot(curves: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in curves.items():
        ax.plot(COUNTS, values, marker="o", label=name)
    ax.set(xscale="log", xlabel="members / samples k", ylabel="mean W2 to HMC", title=title)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    cli.run_main(main)
