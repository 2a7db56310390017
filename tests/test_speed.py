"""Speed knobs must not change what is trained: same module, same keys, same SGD update."""

from __future__ import annotations

import pytest
import torch

from swag import models, speed
from swag.errors import UserError


def test_prepare_model_keeps_class_and_state_dict_keys():
    model = models.get_model("PreResNet8").build(10)
    keys = list(model.state_dict())
    prepared = speed.prepare_model(model, "cpu", channels_last=True)
    assert prepared is model and type(prepared).__name__ == type(model).__name__
    assert list(prepared.state_dict()) == keys
    x = torch.randn(2, 3, 32, 32)
    reference = models.get_model("PreResNet8").build(10)
    reference.load_state_dict(prepared.state_dict())
    torch.testing.assert_close(prepared.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("implementation", ["foreach", "fused"])
def test_sgd_implementations_give_the_for_loop_update(implementation):
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(10)]
    results = {}
    for name in ("for-loop", implementation):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = speed.make_sgd(
            params, lr=0.1, momentum=0.9, weight_decay=1e-3, implementation=name
        )
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            optimizer.step()
        results[name] = [p.detach() for p in params]
    for a, b in zip(results["for-loop"], results[implementation], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_bad_knobs_are_user_errors():
    with pytest.raises(UserError, match="compile mode"):
        speed.prepare_model(torch.nn.Linear(2, 2), "cpu", compile="fastest")
    with pytest.raises(UserError, match="num_threads"):
        speed.set_threads(0)
    with pytest.raises(UserError, match="SGD implementation"):
        speed.make_sgd([torch.nn.Parameter(torch.zeros(1))], 0.1, 0.9, 0.0, "turbo")
