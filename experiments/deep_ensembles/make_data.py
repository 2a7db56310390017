"""Write the 1-D regression data set `data.npz` (docs/original_code.md, "1-D regression" layout).

Keys x (60,), y (60, 1), x_ (100,), y_ (100, 1), float32, before the ×10 scaling that every
method applies. The function is a random 2→10→10→10→1 ReLU net with N(0, 0.1²) weights on
[x, x²]; the committed file is

    python experiments/deep_ensembles/make_data.py --seed 13 --noise_std 0.04

(seed 13 is the first seed whose noiseless function spans ≥ 0.3, as the original's 0.33 does;
most seeds give nearly flat functions that the noise swamps).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from experiments.deep_ensembles.regression1d import make_data, save_npz  # noqa: E402
from swag import cli  # noqa: E402
from swag.errors import UserError  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13, help="torch.Generator seed")
    parser.add_argument("--noise_std", type=float, default=0.04, help="observation noise std")
    parser.add_argument("--out", type=Path, default=HERE / "data.npz")
    args = parser.parse_args(argv)
    try:
        if args.noise_std < 0:
            raise UserError("pass --noise_std >= 0")
        arrays = make_data(args.seed, args.noise_std)
        save_npz(args.out, arrays)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    return 0


if __name__ == "__main__":
    cli.run_main(main)
