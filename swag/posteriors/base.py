"""The contract every weight-space posterior of this library speaks.

A posterior is an `nn.Module` built from a model *instance* (`Posterior(model, ...)`), fitted
or collected by a method-specific step (SWAG's `collect_model`, Laplace's `fit`, SGLD's
collector, VI's `fit`, HMC's sampler), and then used the same way by every consumer:

    posterior.sample(generator)   # write one weight draw θ ~ q(θ) into posterior.model
    posterior.needs_bn_update     # True: recompute BatchNorm statistics after each draw
    posterior.deterministic       # True: every draw is the same (a point mass), so S = 1
    posterior.save(path)          # one file that `swag.posteriors.load(path, model)` reads back

The Bayesian model average (paper eq. 1), p(y|x, D) ≈ 1/S Σ_s p(y|x, θ_s) with θ_s ~ q(θ), is
then one loop over `sample` for any method (`swag.bma.bayesian_model_average`).

Files are `torch.save` dictionaries with at least

    kind            registry key of the posterior class ("swag", "laplace", ...)
    format_version  integer; a file newer than the code is refused with a sentence
    posterior_config  constructor keywords (JSON-like) that rebuild an empty posterior
    state_dict      `Posterior.state_dict()` (includes the model's weights as `model.*` or,
                    for SWAG, `base_model.*`)

and may carry more keys (run_swag.py adds `epoch`, `config`, `sgd_ensemble`). Files without
`kind` (the original repository's, and this project's before the contract) are recognised by
their keys in `detect_kind` (docs/original_code.md describes both layouts).

To add a method: subclass `Posterior`, set `kind`, implement `sample`, `config` and (if it needs
more than buffers) `_load_from_state_dict`, and decorate it with `@register_posterior`; register
how `eval_multiswag.py --method` uses it with `swag.posteriors.methods.register_method`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from swag.errors import UserError
from swag.io import atomic_torch_save

FORMAT_VERSION = 1


class Posterior(nn.Module):
    """Base class of the contract (see the module docstring).

    Attributes:
        kind: registry key written to files.
        format_version: version of this class's file layout.
        needs_bn_update: BatchNorm running statistics must be recomputed after each draw
            (weights that never ran forward in train mode: SWA means, SWAG and SGLD draws).
        deterministic: every draw is identical (SWA mean, a checkpoint): one draw suffices.
    """

    kind: ClassVar[str] = ""
    format_version: ClassVar[int] = FORMAT_VERSION
    needs_bn_update: ClassVar[bool] = False
    deterministic: ClassVar[bool] = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def sample(self, generator: torch.Generator | None = None) -> None:
        """Write one draw θ ~ q(θ) into `self.model` (its parameters; buffers stay)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor keywords (besides `model`) that rebuild an empty posterior of this shape."""
        return {}

    @classmethod
    def from_config(cls, model: nn.Module, **config) -> Posterior:
        """An empty posterior over `model` with the stored constructor keywords."""
        return cls(model, **config)

    @property
    def device(self) -> torch.device:
        """Where draws are made (the device of the first buffer or model parameter)."""
        for tensor in self.buffers():
            return tensor.device
        return next(self.model.parameters()).device

    def to_file(self, **extra) -> dict[str, Any]:
        """The dictionary `save` writes; `extra` adds keys (e.g. epoch, run config)."""
        return {
            "kind": self.kind,
            "format_version": self.format_version,
            "posterior_config": self.config(),
            "state_dict": self.state_dict(),
            **extra,
        }

    def save(self, path: str | Path, **extra) -> Path:
        """Write the posterior to `path` atomically; `load(path, model)` reads it back."""
        atomic_torch_save(self.to_file(**extra), path)
        return Path(path)

    def load_file_state(self, state: Mapping[str, Any], source: str) -> None:
        """Load `state["state_dict"]` with a one-sentence error for another architecture."""
        try:
            self.load_state_dict(state["state_dict"])
        except RuntimeError as error:
            raise UserError(
                f"{source} was saved from a different model or number of classes; build the "
                "model with the architecture and number of classes it was made with"
            ) from error


_KINDS: dict[str, type[Posterior]] = {}
_LEGACY_READERS: dict[str, Any] = {}


def register_posterior(cls: type[Posterior]) -> type[Posterior]:
    """Class decorator: make files of `cls.kind` loadable by `load`."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} must set a non-empty `kind` to be registered")
    _KINDS[cls.kind] = cls
    return cls


def posterior_kinds() -> list[str]:
    """Kinds `load` can read."""
    return sorted(_KINDS)


def posterior_class(kind: str) -> type[Posterior]:
    if kind not in _KINDS:
        raise UserError(
            f"no posterior of kind {kind!r} is registered (known: {', '.join(posterior_kinds())}); "
            "import the module that defines it before loading"
        )
    return _KINDS[kind]


def register_legacy_reader(kind: str, matches, read) -> None:
    """Recognise files written without `kind`: `matches(state) -> bool`,
    `read(state, model, source) -> Posterior`."""
    _LEGACY_READERS[kind] = (matches, read)


def detect_kind(state: Mapping[str, Any], source: str = "this file") -> str:
    """The posterior kind of a loaded file dictionary, for new and legacy layouts alike."""
    if "kind" in state:
        kind = state["kind"]
        version = int(state.get("format_version", 0))
        if not isinstance(kind, str) or kind not in _KINDS:
            raise UserError(
                f"{source} holds a posterior of unknown kind {kind!r}; known kinds are "
                f"{', '.join(posterior_kinds())} (a newer version of this library may write it)"
            )
        if version > _KINDS[kind].format_version:
            raise UserError(
                f"{source} has {kind} format version {version}, newer than this library reads "
                f"({_KINDS[kind].format_version}); upgrade the library"
            )
        return kind
    for kind, (matches, _) in _LEGACY_READERS.items():
        if matches(state):
            return kind
    raise UserError(
        f"{source} is not a posterior or checkpoint this library knows (no 'kind' key and no "
        "known layout); pass a file written by run_swag.py, fit_laplace.py or Posterior.save"
    )


def load(
    source: str | Path | Mapping[str, Any],
    model: nn.Module,
    map_location: str | torch.device | None = None,
    name: str | None = None,
) -> Posterior:
    """The posterior stored in `source` (a path or a loaded dictionary), over `model`.

    Args:
        source: a file written by `Posterior.save` or run_swag.py (any version), or the
            original repository's `swag-<e>.pt` / `checkpoint-<e>.pt`.
        model: a fresh instance of the architecture the file was made with; the posterior
            writes draws into it.
        map_location: where tensors go (default: the device of `model`).
        name: how error messages call `source` (default: its path).

    Raises:
        UserError: unknown or newer kind, another architecture, unreadable file.
    """
    from swag.training import load_checkpoint

    if map_location is None:
        map_location = next(model.parameters()).device
    if name is None:
        name = str(source) if isinstance(source, str | Path) else "the posterior state"
    if isinstance(source, str | Path):
        state = load_checkpoint(source, map_location=map_location)
    else:
        state = dict(source)
    kind = detect_kind(state, name)
    if "kind" not in state:
        return _LEGACY_READERS[kind][1](state, model, name)
    cls = _KINDS[kind]
    try:
        posterior = cls.from_config(model, **dict(state.get("posterior_config", {})))
    except TypeError as error:
        raise UserError(f"{name} has a {kind} configuration this library cannot use") from error
    posterior.load_file_state(state, name)
    return posterior
