"""Evaluation methods: how `eval_multiswag.py --method <name>` turns member files into posteriors.

A method names the file kinds it evaluates, how a loaded posterior is adapted to it (e.g.
MultiSWA evaluates the mean of a SWAG file), whether it draws `--swag_samples` samples per
member or one, and the label and colour its curves get in plots. Registering a method is all
the drivers need: `--method` choices, plot labels and colours are read from here.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from swag.errors import UserError
from swag.posteriors.base import Posterior


@dataclass(frozen=True)
class SamplingOptions:
    """Evaluation-time options that some methods read (others ignore them).

    Attributes:
        scale: SWAG covariance scale (posterior tempering; 0.5 in the paper).
        cov: include SWAG's low-rank term.
        legacy_variance: the paper-era SWAG bug (variance instead of std on the diagonal).
        max_num_models: use at most this many SWAG deviation columns (None: all stored).
    """

    scale: float = 0.5
    cov: bool = True
    legacy_variance: bool = False
    max_num_models: int | None = None


def _unchanged(posterior: Posterior, options: SamplingOptions) -> Posterior:
    return posterior


@dataclass(frozen=True)
class Method:
    """One `--method` choice.

    Attributes:
        name: the `--method` value.
        label: legend label in plots.
        colour: matplotlib colour of its curves.
        kinds: posterior kinds of the member files it evaluates.
        adapt: (loaded posterior, options) -> the posterior to sample from.
        file_hint: what to pass, for error messages ("the swag-<epoch>.pt of each run").
        member_file: the file of one training run this method evaluates, as a pattern with
            `{epoch}` (run_multiswag.sh reads it); None when no run_swag.py file fits.
    """

    name: str
    label: str
    colour: str
    kinds: tuple[str, ...]
    adapt: Callable[[Posterior, SamplingOptions], Posterior] = field(default=_unchanged)
    file_hint: str = "one posterior file per member"
    member_file: str | None = None


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make `method` a `--method` choice (a later registration of the same name replaces it)."""
    _METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    """The registered `--method` choices, in registration order."""
    return list(_METHODS)


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def check_kind(method: Method, kind: str, source: str) -> None:
    """Refuse a member file whose kind the method cannot evaluate, naming what it takes."""
    if kind not in method.kinds:
        raise UserError(
            f"{source} is a {kind} file, which the {method.name} method cannot use; it takes "
            f"{method.file_hint}"
        )


def import_module_or_file(name: str) -> None:
    """Import a module that registers posteriors or methods: a dotted name or a `.py` path."""
    try:
        if name.endswith(".py"):
            path = Path(name)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or not path.is_file():
                raise FileNotFoundError(name)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(name)
    except (ImportError, FileNotFoundError) as error:
        raise UserError(
            f"cannot import {name!r} ({error}); pass a module importable from PYTHONPATH or the "
            "path of a .py file"
        ) from None
