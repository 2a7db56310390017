"""Output gradients of a chain network for all columns of S in one backward sweep, no autograd.

The GGN needs, at every posterior layer, the output gradients J_nᵀ s_r of the R columns s_r of
the output-Hessian square root S_n (`curvature.backpropagate`). Autograd gives one column per
backward pass. When the network is a chain of modules (each module's input is the previous
module's output, at most reshaped, and the logits are the last module's output), the backward
pass is a product of per-module linear maps fixed by the forward pass, so all R columns go
through it at once, stacked example-major along the batch ([N·R, ...]):

    Linear     g ← g W                    Conv2d      g ← conv2d_input(g, W) (transposed conv)
    ReLU       g ← g ⊙ 1[y > 0]           Tanh        g ← g ⊙ (1 − y²)
    MaxPool2d  g ← g scattered to each window's argmax; after a ReLU, masked by 1[max > 0]
               first (the ReLU's mask at the argmax), which replaces the ReLU's full-size pass
    BatchNorm (eval)  g ← g γ / √(σ²_running + ε)      Dropout (eval), Flatten, Identity: g

Forward hooks check the chain (a module's input shares the storage and version of the
previous output) and keep what the rules need. Any other network (residual connections,
tensor operations between modules, other module types, in-place changes of a kept tensor)
returns None, and the caller uses autograd; `NOT_CHAIN` remembers such models.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PASS_THROUGH = (nn.Dropout, nn.Flatten, nn.Identity)
SUPPORTED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.modules.batchnorm._BatchNorm)
NOT_CHAIN: weakref.WeakSet = weakref.WeakSet()


@dataclass
class Call:
    """One module call of the forward pass: its input and output and their versions."""

    module: nn.Module
    inputs: torch.Tensor
    input_version: int
    output: torch.Tensor
    output_version: int
    indices: torch.Tensor | None = None  # MaxPool2d argmax positions


@contextlib.contextmanager
def tracing(model: nn.Module):
    """Record every leaf-module call (in call order) while the model runs.

    MaxPool2d modules run as `F.max_pool2d(..., return_indices=True)` meanwhile (same output),
    so that their argmax positions come from the forward pass itself; on a channels-last copy of
    the input, which is several times faster on CPU than pooling the channels-first maps.
    """
    calls: list[Call] = []
    versions: list[int] = []
    pooled: list[torch.Tensor] = []

    def before(module, args):
        versions.append(args[0]._version if args and torch.is_tensor(args[0]) else -1)

    def after(module, args, output):
        if not (args and torch.is_tensor(args[0]) and torch.is_tensor(output)):
            versions.append(-2)  # marks the trace as not a chain
            return
        call = Call(module, args[0], versions.pop(), output, output._version)
        if isinstance(module, nn.MaxPool2d) and pooled:
            call.indices = pooled.pop()
        calls.append(call)

    def max_pool(module: nn.MaxPool2d):
        def forward(x):
            out, indices = F.max_pool2d(
                x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x,
                module.kernel_size, module.stride, module.padding, module.dilation,
                module.ceil_mode, return_indices=True,
            )  # fmt: skip
            pooled.append(indices.contiguous())
            return out.contiguous()

        return forward

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    pools = [
        m
        for m in leaves
        if type(m) is nn.MaxPool2d and not m.return_indices and "forward" not in vars(m)
    ]
    handles = [m.register_forward_pre_hook(before) for m in leaves]
    handles += [m.register_forward_hook(after) for m in leaves]
    for module in pools:
        module.forward = max_pool(module)
    try:
        yield calls, versions
    finally:
        for handle in handles:
            handle.remove()
        for module in pools:
            del module.forward


def _links(previous: torch.Tensor, version: int, following: torch.Tensor, seen: int) -> bool:
    """`following` is `previous` (same storage, unchanged in between), at most reshaped."""
    return (
        following.data_ptr() == previous.data_ptr()
        and following.numel() == previous.numel()
        and following.is_contiguous()
        and previous.is_contiguous()
        and seen == version
    )


def _segment(calls: list[Call], modules: list[nn.Module], logits: torch.Tensor) -> int | None:
    """Index of the first posterior call if calls[index:] is a supported chain, else None."""
    wanted = {id(m) for m in modules}
    starts = [i for i, call in enumerate(calls) if id(call.module) in wanted]
    distinct = {id(calls[i].module) for i in starts}
    if not starts or len(distinct) != len(starts) or len(starts) != len(modules):
        return None  # a posterior layer called twice or never
    first = starts[0]
    segment = calls[first:]
    for call in segment:
        module = call.module
        if isinstance(module, PASS_THROUGH) and not module.training:
            continue
        if not isinstance(module, SUPPORTED):
            return None
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.training or module.running_var is None
        ):
            return None
        if isinstance(module, nn.MaxPool2d) and call.indices is None:
            return None
        if isinstance(module, nn.Conv2d) and (
            module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            return None
    pairs = zip(segment, segment[1:], strict=False)
    if not all(_links(a.output, a.output_version, b.inputs, b.input_version) for a, b in pairs):
        return None
    last = segment[-1]
    if not _links(last.output, last.output_version, logits, logits._version):
        return None
    return first


def _kept_unchanged(segment: list[Call], modules: list[nn.Module]) -> bool:
    wanted = {id(m) for m in modules}
    for call in segment:
        if id(call.module) in wanted and call.inputs._version != call.input_version:
            return False
        if isinstance(call.module, nn.ReLU | nn.Tanh | nn.MaxPool2d):
            if call.output._version != call.output_version:
                return False
    return True


def _max_pool(
    call: Call, grad: torch.Tensor, count: int, mask: bool, workspace, channels_last: bool = False
) -> torch.Tensor:
    """Scatter pooled gradients [N·R, C, h, w] to the argmax of each window: [N·R, C, H, W].

    The zeroed result lives in `workspace` (a dict kept by the caller across calls, keyed by the
    module): writing into memory used before is several times faster than into fresh pages, so a
    buffer is kept at its largest size and smaller sub-batches (a loader batch's last part) use
    its front. `channels_last`: the result in channels-last memory (a view), the layout of KFAC's
    rows.
    """
    channels, height, width = call.inputs.shape[1:]
    pooled = grad.reshape(count, -1, channels, call.output.shape[2] * call.output.shape[3])
    if mask:  # the ReLU before the pool, at the argmax
        pooled = pooled * (call.output > 0).flatten(2).unsqueeze(1)
    index = call.indices.flatten(2).unsqueeze(1).expand_as(pooled)
    shape = (count, pooled.shape[1], height * width, channels)
    if not channels_last:
        shape = (*shape[:2], channels, height * width)
    key = id(call.module), channels_last
    size = math.prod(shape)
    buffer = workspace.get(key)
    if buffer is None or buffer.numel() < size or buffer.dtype != grad.dtype:
        buffer = workspace[key] = grad.new_empty(size)
    full = buffer[:size].view(shape).zero_()
    full = full.transpose(2, 3) if channels_last else full
    kernel, stride, dilation = (
        value if isinstance(value, tuple) else (value, value)
        for value in (call.module.kernel_size, call.module.stride, call.module.dilation)
    )
    if all(s >= (k - 1) * d + 1 for k, s, d in zip(kernel, stride, dilation, strict=True)):
        full.scatter_(3, index, pooled)  # disjoint windows: no position gets two gradients
    else:
        full.scatter_add_(3, index, pooled)
    return full.view(-1, channels, height, width)


def _step(call: Call, grad: torch.Tensor, count: int, workspace: dict) -> torch.Tensor:
    """The backward rule of one module: output gradients [N·R, ...] → input gradients."""
    module = call.module
    if isinstance(module, nn.Linear):
        return grad @ module.weight
    if isinstance(module, nn.Conv2d):
        shape = (grad.shape[0], *call.inputs.shape[1:])
        return torch.nn.grad.conv2d_input(
            shape, module.weight, grad, module.stride, module.padding, module.dilation,
            module.groups,
        )  # fmt: skip
    if isinstance(module, nn.ReLU | nn.Tanh):
        factor = call.output > 0 if isinstance(module, nn.ReLU) else 1 - call.output.square()
        return (grad.view(count, -1, *factor.shape[1:]) * factor.unsqueeze(1)).view(grad.shape)
    if isinstance(module, nn.MaxPool2d):
        return _max_pool(call, grad, count, False, workspace)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        return grad * scale.view(-1, *[1] * (grad.dim() - 2))
    return grad  # Dropout, Flatten, Identity in eval mode


@torch.no_grad()
def backpropagate(
    model: nn.Module,
    modules: list[nn.Module],
    inputs: torch.Tensor,
    columns,
    workspace: dict | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None:
    """One no-grad forward pass and one backward sweep for all columns of S, or None.

    Args:
        model: the network (in eval mode).
        modules: the posterior layers' modules.
        inputs: x [N, ...].
        columns: logits [N, C] → S [N, C, R].
        workspace: buffers reused across calls (the gradients returned may live in them, so they
            are valid until the next call with the same workspace); None: fresh ones.
        channels_last: the first posterior layer's output gradients, when a max-pool scatter
            makes them, in channels-last memory.

    Returns:
        logits [N, C], each module's input, each module's output gradients [N, R, *out]
        ([n, r] is J_nᵀ S[n, :, r]); None if the model is not a chain.
    """
    if model in NOT_CHAIN:
        return None
    with tracing(model) as (calls, versions):
        logits = model(inputs)
    first = None if -2 in versions else _segment(calls, modules, logits)
    if first is None or not _kept_unchanged(calls[first:], modules):
        NOT_CHAIN.add(model)
        return None
    sqrt = columns(logits)
    count, workspace = inputs.shape[0], {} if workspace is None else workspace
    grad = sqrt.transpose(1, 2)  # [N, R, C]
    found = {}
    index = len(calls) - 1
    wanted = {id(m) for m in modules}
    while True:
        call = calls[index]
        shape = call.output.shape[1:]
        grad = grad.reshape(count, -1, *shape)  # [N, R, *out]
        if id(call.module) in wanted:
            found[id(call.module)] = (call.inputs, grad)
        if index == first:
            break
        flat = grad.reshape(-1, *shape)
        if isinstance(call.module, nn.MaxPool2d):
            fused = isinstance(calls[index - 1].module, nn.ReLU)
            index -= 1 + fused
            grad = _max_pool(call, flat, count, fused, workspace, channels_last and index == first)
            continue
        grad = _step(call, flat, count, workspace)
        index -= 1
    return logits, [found[id(m)][0] for m in modules], [found[id(m)][1] for m in modules]
