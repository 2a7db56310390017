"""Per-member NLL of deep ensembles, MultiSWA and MultiSWAG, from eval_multiswag.py's caches.

The prefix curves of `plot_multiswag.py` start at m = 1 with member 1 alone, which depends on
one training seed. This prints, for every member separately, the NLL (mean over examples) of
that member's own predictive (its SGD iterate, its SWA mean, or the average of its S SWAG
samples) on the clean set and per severity (mean over corruptions), and the differences
DE − MultiSWAG and MultiSWA − MultiSWAG per member: a positive value means MultiSWAG is better.

    python experiments/train/member_nll.py \
        --caches runs/eval/probs_ensemble runs/eval/probs_multiswa runs/eval/probs_multiswag
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from swag import cli, metrics  # noqa: E402
from swag.bma_results import load_probability_cache, split_test_set_name  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.posteriors import get_method, method_names  # noqa: E402


def member_nlls(cache: Path) -> dict[str, np.ndarray]:
    """Test-set name -> NLL of each member's own predictive, shape [M]."""
    probs, targets = load_probability_cache(cache)
    nlls = {}
    for name, per_member in probs.items():  # [M, S, N, C]: average each member's S samples
        averages = (np.asarray(member, np.float64).mean(0) for member in per_member)
        nlls[name] = np.array([metrics.nll(average, targets[name]) for average in averages])
    return nlls


def by_severity(nlls: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """'clean' and 'severity s' -> mean over the corruptions of that severity, shape [M]."""
    groups: dict[str, list[np.ndarray]] = {}
    for name, values in nlls.items():
        severity = split_test_set_name(name)[1]
        groups.setdefault(f"severity {severity}" if severity else name, []).append(values)
    return {group: np.mean(groups[group], axis=0) for group in sorted(groups)}


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caches", nargs="+", required=True, type=Path,
                        help="probs_<method>/ folders written with --cache_probs")  # fmt: skip
    args = parser.parse_args(argv)
    results = {}
    for cache in args.caches:
        method = cache.name.removeprefix("probs_")
        if method not in method_names():
            raise UserError(f"{cache} is not a probs_<method>/ folder of eval_multiswag.py")
        results[method] = by_severity(member_nlls(cache))
    rows = []
    for group in next(iter(results.values())):
        for method, table in results.items():
            rows.append([group, get_method(method).label, *table[group], table[group].mean()])
        if {"ensemble", "multiswag"} <= results.keys():
            gap = results["ensemble"][group] - results["multiswag"][group]
            rows.append([group, "DE − MultiSWAG", *gap, gap.mean()])
        if {"multiswa", "multiswag"} <= results.keys():
            gap = results["multiswa"][group] - results["multiswag"][group]
            rows.append([group, "MultiSWA − MultiSWAG", *gap, gap.mean()])
    num_members = len(rows[0]) - 3
    headers = ["test set", "method", *(f"member {m + 1}" for m in range(num_members)), "mean"]
    print(tabulate(rows, headers, tablefmt="github", floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    cli.run_main(main)
