"""Speed knobs for training: threads, memory format, bf16 autocast support, torch.compile, SGD.

None of these changes the optimiser, the batch size or the augmentation distribution; bf16
autocast (`swag.training.train_epoch(..., bf16=True)`) changes only the precision of the
forward/backward matrix products, while weights, gradients, the SGD state and the SWAG moments
stay float32 (float64 for the moments). Measured effects are in benchmarks/README.md.

    model = speed.prepare_model(spec.build(10), device, channels_last=True)
    optimizer = speed.make_sgd(model.parameters(), lr, momentum, wd, "fused")
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable

import torch
from torch import nn

from swag.errors import UserError

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
SGD_IMPLEMENTATIONS = ("auto", "for-loop", "foreach", "fused")


def set_threads(num_threads: int | None) -> None:
    """`torch.set_num_threads(num_threads)` (intra-op threads); None keeps torch's default."""
    if num_threads is None:
        return
    if num_threads < 1:
        raise UserError(f"num_threads must be at least 1, got {num_threads}")
    torch.set_num_threads(num_threads)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format for 4-D activations (pass it to `swag.data.TensorLoader`)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is fast on `device`: CUDA with bf16, or a CPU with AVX512-BF16/AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and _cpu_has_bf16())


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as stream:
            flags = stream.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def prepare_model(
    model: nn.Module,
    device: torch.device | str,
    channels_last: bool = False,
    compile: str = "none",
) -> nn.Module:
    """Move `model` to `device`, optionally to channels_last, optionally compiled in place.

    Compilation uses `nn.Module.compile`, which keeps the module object, its class and its
    `state_dict` keys (no `_orig_mod.` prefix), so checkpoints and `SWAG.collect_model` see the
    plain model. The first batches of each new input shape or train/eval mode pay the compile
    time (inductor, tens of seconds on CPU).

    Args:
        compile: one of `COMPILE_MODES`; "none" leaves the model eager.

    Returns:
        the same `model` object, ready to train.
    """
    if compile not in COMPILE_MODES:
        raise UserError(
            f"unknown compile mode {compile!r}; choose one of: {', '.join(COMPILE_MODES)}"
        )
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile != "none":
        model.compile(mode=None if compile == "default" else compile, dynamic=False)
    return model


def make_sgd(
    params: Iterable[nn.Parameter],
    lr: float,
    momentum: float,
    weight_decay: float,
    implementation: str = "auto",
) -> torch.optim.SGD:
    """`torch.optim.SGD` with the chosen kernel implementation; the update rule is the same.

    v ← μ·v + (g + λ·w),  w ← w − η·v   (μ = momentum, λ = weight_decay, η = lr).

    Args:
        implementation: "auto" (torch's choice), "for-loop" (one kernel per parameter and op),
            "foreach" (multi-tensor kernels) or "fused" (one fused kernel per dtype/device).
    """
    if implementation not in SGD_IMPLEMENTATIONS:
        raise UserError(
            f"unknown SGD implementation {implementation!r}; choose one of: "
            f"{', '.join(SGD_IMPLEMENTATIONS)}"
        )
    options = {
        "auto": {},
        "for-loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }[implementation]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **options)


def peak_memory_gib(device: torch.device | str) -> float:
    """Peak memory of this process: CUDA max allocated on a GPU, else the peak RSS (GiB)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


def load_average() -> float:
    """The 1-minute load average (other processes distort CPU timings; report it alongside)."""
    return os.getloadavg()[0]


class InferenceGraph:
    """An eval-mode rewrite of `model` that computes the same function with less work.

    Two rewrites of the traced graph (`torch.fx`), both exact up to float32 rounding:

    * an eval-mode BatchNorm whose input is a convolution used nowhere else is folded into
      that convolution: with s = γ / sqrt(σ² + ε),  W' = W·s (per output channel) and
      b' = (b − μ)·s + β, so BN(conv(x; W, b)) = conv(x; W', b');
    * ReLU → MaxPool becomes MaxPool → ReLU: max commutes with the nondecreasing ReLU, so the
      result is bit-identical and the ReLU runs on a quarter of the values.

    The graph shares every other submodule with `model`, so new weights written into `model`
    (a posterior sample, a BN update) are seen at once; `refresh()` recomputes the folded
    weights and must be called after each change. A model that cannot be traced is used as is.

        graph = InferenceGraph(model)
        graph.refresh()  # after every sample / BN update
        probs = swag.training.predict(loader, graph.module, device)
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.folded: list[tuple[nn.Module, nn.Conv2d, nn.modules.batchnorm._BatchNorm]] = []
        try:
            self.module = _rewrite(torch.fx.symbolic_trace(model), self.folded)
        except Exception:  # noqa: BLE001  (any untraceable model runs unchanged)
            self.module, self.folded = model, []

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        """Recompute the folded convolutions from `model`'s weights; returns the eval module."""
        for folded, conv, bn in self.folded:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
            folded.weight.copy_(weight)
            folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        return self.module.eval()


def _rewrite(graph_module: torch.fx.GraphModule, folded: list) -> torch.fx.GraphModule:
    modules = dict(graph_module.named_modules())
    graph = graph_module.graph

    def module_of(node):
        return modules.get(node.target) if node.op == "call_module" else None

    for node in list(graph.nodes):
        bn, source = module_of(node), node.args[0] if node.args else None
        conv = module_of(source) if isinstance(source, torch.fx.Node) else None
        if (
            isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats
            and bn.affine
            and type(conv) is nn.Conv2d
            and len(source.users) == 1
        ):
            replacement = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                conv.padding, conv.dilation, conv.groups, True, conv.padding_mode,
            ).to(conv.weight.device, conv.weight.dtype)  # fmt: skip
            replacement.weight.data = torch.empty_like(conv.weight)  # keeps its memory format
            name = f"folded_{len(folded)}"
            graph_module.add_submodule(name, replacement.requires_grad_(False))
            source.target = name
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            folded.append((replacement, conv, bn))
            continue
        pool = module_of(node)
        relu = module_of(source) if isinstance(source, torch.fx.Node) else None
        if (
            isinstance(pool, nn.MaxPool2d)
            and pool.padding in (0, (0, 0))
            and not pool.return_indices
            and isinstance(relu, nn.ReLU)
            and len(source.users) == 1
        ):
            node.args = (source.args[0], *node.args[1:])
            node.replace_all_uses_with(source)
            source.args = (node, *source.args[1:])
            node.append(source)  # the ReLU now runs after the pool
    graph.lint()
    graph_module.recompile()
    return graph_module
