"""The original's script name for `gp_train_binary_corrupted.py` (same flags; see its docstring)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from experiments.rethinking_generalization.gp_train_binary_corrupted import main  # noqa: E402
from swag.cli import run_main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
