"""Laplace posterior: against laplace-torch, closed forms (Bayesian linear regression), dense
Hessians and Jacobians from torch.autograd, sampling statistics, and the file round trip."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import LINEAR_NOISE_VAR, LINEAR_PRIOR_VAR, bayesian_linear_regression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from swag.errors import UserError
from swag.models import get_model
from swag.posteriors import base, chain, curvature
from swag.posteriors.laplace import Laplace
from swag.posteriors.methods import get_method

torch.set_num_threads(1)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 3)
    )


def conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(36, 3),
    )  # fmt: skip
    net.train()
    for _ in range(3):  # non-trivial running statistics
        net(torch.randn(16, 2, 8, 8))
    return net.eval()


def classification_data(shape, n=24, classes=3, dtype=torch.float32, batch=8):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, *shape, generator=generator, dtype=dtype)
    targets = torch.randint(0, classes, (n,), generator=generator)
    return inputs, targets, DataLoader(TensorDataset(inputs, targets), batch_size=batch)


def dense_ggn(model: nn.Module, params: list[nn.Parameter], inputs: torch.Tensor) -> torch.Tensor:
    """Σ_n J_nᵀ (diag p − p pᵀ) J_n from torch.func Jacobians (model in eval mode)."""
    names = {id(p): name for name, p in model.named_parameters()}
    wanted = {names[id(p)]: p.detach() for p in params}

    def logits(values):
        return torch.func.functional_call(model, values, (inputs,))

    jac = torch.func.jacrev(logits)(wanted)
    jac = torch.cat([jac[n].reshape(*jac[n].shape[:2], -1) for n in wanted], dim=-1)
    probs = torch.softmax(logits(wanted), -1)
    lam = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac)


@pytest.mark.parametrize("hessian", ["diag", "kron"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_matches_laplace_torch_on_an_mlp(hessian, subset):
    """float64: evidence (scalar and per-tensor δ), variances and probit predictive to 1e-9."""
    laplace_torch = pytest.importorskip("laplace")
    model = mlp().double()
    inputs, targets, loader = classification_data((5,), dtype=torch.float64)
    ours = Laplace(model, hessian, subset).fit(loader)
    groups = len(ours.prior_precision)
    deltas = [torch.tensor(0.7, dtype=torch.float64), torch.linspace(0.5, 2, groups).double()]
    for delta in deltas[: 1 + (subset == "all")]:  # laplace-torch: scalar δ for a last layer
        reference = laplace_torch.Laplace(
            model, "classification", subset_of_weights=subset, hessian_structure=hessian,
            prior_precision=delta,
        )  # fmt: skip
        reference.fit(loader)
        ours.prior_precision.copy_(delta.expand(groups))
        expected = reference.log_marginal_likelihood()
        assert float(ours.log_marginal_likelihood()) == pytest.approx(float(expected), rel=1e-9)
        variance = (
            reference.posterior_variance
            if hessian == "diag"
            else reference.posterior_precision.diag(exponent=-1)
        )
        torch.testing.assert_close(ours.posterior_variance(), variance, rtol=1e-9, atol=0)
        expected_probs = reference(inputs[:6], link_approx="probit")
        torch.testing.assert_close(ours.predictive(inputs[:6]), expected_probs, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float64, marks=pytest.mark.slow), torch.float32], ids=str
)
@pytest.mark.parametrize("hessian", ["diag", "kron"])
def test_matches_laplace_torch_on_lenet5(hessian, dtype):
    """The registry's LeNet5 (431,080 weights): 1e-9 relative in float64 (slow); in float32 1e-4
    on the variances (KFAC variances: float64 only). laplace-torch's float32 evidence carries
    its own rounding (about 0.05 nats: float32 sums of terms of size 5·10⁵), so in float32 the
    log-determinant ratio and the evidence are compared at 4 ulp of the log-determinant."""
    laplace_torch = pytest.importorskip("laplace")
    torch.manual_seed(0)
    model = get_model("LeNet5").build(10).to(dtype)
    _, _, loader = classification_data((1, 28, 28), n=10, classes=10, dtype=dtype, batch=5)
    reference = laplace_torch.Laplace(
        model, "classification", subset_of_weights="all", hessian_structure=hessian,
        prior_precision=3.0,
    )  # fmt: skip
    reference.fit(loader)
    ours = Laplace(model, hessian, prior_precision=3.0).fit(loader)
    rel = 1e-9 if dtype == torch.float64 else 1e-4
    if hessian == "diag" or dtype == torch.float64:  # laplace-torch's KFAC diagonal takes 10 s
        variance = (
            reference.posterior_variance
            if hessian == "diag"
            else reference.posterior_precision.diag(exponent=-1)
        )
        torch.testing.assert_close(ours.posterior_variance().to(dtype), variance, rtol=rel, atol=0)
    log_det = ours.evidence()["log_det_posterior_precision"]
    log_det_ratio = log_det - ours.num_params * math.log(3.0)
    evidence, expected = float(ours.log_marginal_likelihood()), reference.log_marginal_likelihood()
    if dtype == torch.float64:
        assert log_det_ratio == pytest.approx(float(reference.log_det_ratio), rel=rel)
        assert evidence == pytest.approx(float(expected), rel=rel)
    else:  # float32 rounding of laplace-torch's sums: a few ulp of the log-determinant
        tolerance = 4 * torch.finfo(torch.float32).eps * log_det
        assert log_det_ratio == pytest.approx(float(reference.log_det_ratio), abs=tolerance)
        assert evidence == pytest.approx(float(expected), abs=tolerance)


def test_prior_precision_maximises_laplace_torch_evidence():
    """The optimised δ is the maximiser of laplace-torch's evidence found by scipy (1e-4)."""
    laplace_torch = pytest.importorskip("laplace")
    from scipy.optimize import minimize_scalar

    model = mlp().double()
    _, _, loader = classification_data((5,), dtype=torch.float64)
    reference = laplace_torch.Laplace(
        model, "classification", subset_of_weights="all", hessian_structure="kron"
    )
    reference.fit(loader)

    def negative(log_delta):
        delta = torch.tensor(math.exp(log_delta), dtype=torch.float64)
        return -float(reference.log_marginal_likelihood(prior_precision=delta))

    best = minimize_scalar(negative, bounds=(-8, 8), method="bounded", options={"xatol": 1e-9})
    ours = Laplace(model, "kron").fit(loader)
    delta = ours.optimize_prior_precision("scalar")
    assert float(delta[0]) == pytest.approx(math.exp(best.x), rel=1e-4)
    scalar_evidence = float(ours.log_marginal_likelihood())
    ours.optimize_prior_precision("layerwise")
    assert float(ours.log_marginal_likelihood()) >= scalar_evidence - 1e-9
    gradient = torch.func.grad(lambda d: ours.log_marginal_likelihood(d.exp()))(
        ours.prior_precision.log()
    )
    assert gradient.abs().max() < 1e-4


def blr_laplace(hessian, design, targets, mean, batch_size):
    """Laplace of the 3-weight Bayesian linear regression, fitted at its exact posterior mean."""
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(mean[None])
    loader = DataLoader(TensorDataset(design, targets), batch_size=batch_size)
    return Laplace(
        model, hessian, likelihood="regression", prior_precision=1 / LINEAR_PRIOR_VAR,
        noise_var=LINEAR_NOISE_VAR,
    ).fit(loader)  # fmt: skip


@pytest.mark.parametrize("hessian", ["diag", "kron"])
def test_bayesian_linear_regression_evidence_is_exact(hessian):
    """Laplace is exact for a linear-Gaussian model: log N(y | 0, σ²I + X Xᵀ/δ) and Λ⁻¹.

    KFAC is exact for one output and no separate bias; the diagonal is exact for orthogonal
    design columns, so the diagonal case uses an orthogonalised design.
    """
    _, targets, design, precision, mean = bayesian_linear_regression()
    if hessian == "diag":
        design = torch.linalg.qr(design)[0] * torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64)
        precision = design.T @ design / LINEAR_NOISE_VAR + torch.eye(3) / LINEAR_PRIOR_VAR
        mean = torch.linalg.solve(precision, design.T @ targets[:, 0] / LINEAR_NOISE_VAR)
    posterior = blr_laplace(hessian, design, targets, mean, batch_size=10)
    marginal = torch.eye(30) * LINEAR_NOISE_VAR + design @ design.T * LINEAR_PRIOR_VAR
    exact = torch.distributions.MultivariateNormal(torch.zeros(30), marginal).log_prob(
        targets[:, 0]
    )
    assert float(posterior.log_marginal_likelihood()) == pytest.approx(float(exact), rel=1e-10)
    torch.testing.assert_close(posterior.posterior_variance(), torch.linalg.inv(precision).diag())


def test_diagonal_ggn_equals_the_dense_hessian_where_they_coincide():
    """Zero residuals (regression) and a linear softmax model: the GGN is the Hessian."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    inputs = torch.randn(12, 3, dtype=torch.float64)
    targets = net(inputs).detach()  # zero residuals
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(vector):
        values = dict(zip(names, torch.split(vector, [s.numel() for s in shapes]), strict=True))
        values = {n: v.reshape(s) for (n, v), s in zip(values.items(), shapes, strict=True)}
        out = torch.func.functional_call(net, values, (inputs,))
        return (out - targets).square().sum() / (2 * 0.3)

    hessian = torch.autograd.functional.hessian(loss, flat)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=5)
    fitted = Laplace(net, "diag", likelihood="regression", noise_var=0.3).fit(loader)
    torch.testing.assert_close(fitted.ggn_diag, hessian.diag())

    linear = nn.Linear(4, 3).double()
    inputs, labels, loader = classification_data((4,), dtype=torch.float64)
    weight, bias = linear.weight.detach(), linear.bias.detach()
    hessian = torch.autograd.functional.hessian(
        lambda w, b: nn.functional.cross_entropy(inputs @ w.T + b, labels, reduction="sum"),
        (weight, bias),
    )
    expected = torch.cat([hessian[0][0].reshape(12, 12).diag(), hessian[1][1].diag()])
    torch.testing.assert_close(Laplace(linear, "diag").fit(loader).ggn_diag, expected)


def test_conv_batchnorm_network_diag_matches_dense_ggn_and_kron_fits():
    """Conv2d (padding, stride, no bias) through eval-mode BatchNorm: exact diagonal GGN; KFAC
    over all weights of a BatchNorm network fits, and draws leave BatchNorm at MAP."""
    net = conv_bn_net().double()
    inputs, _, loader = classification_data((2, 8, 8), dtype=torch.float64)
    diag = Laplace(net, "diag").fit(loader)
    dense = dense_ggn(net, diag.params, inputs)
    torch.testing.assert_close(diag.ggn_diag, dense.diag())
    kron = Laplace(net, "kron").fit(loader)
    assert kron.needs_bn_update is False and not net.training
    bn_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("1.", "4."))}
    kron.sample(torch.Generator().manual_seed(0))
    for key, value in net.state_dict().items():
        if key in bn_before:
            assert torch.equal(value, bn_before[key])
    assert not torch.equal(net[0].weight, kron.mean[: net[0].weight.numel()].view_as(net[0].weight))
    assert math.isfinite(float(kron.log_marginal_likelihood()))


class Residual(nn.Module):
    """Not a chain (a skip connection): the GGN goes through autograd, one pass per column."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        return self.head(torch.flatten(x + self.relu(self.conv(x)), 1))


def test_chain_sweep_equals_autograd_and_other_networks_use_autograd():
    """The one-sweep backward of a chain (ReLU before max-pools, overlapping pool windows,
    eval BatchNorm, Tanh, Dropout, a flatten inside forward) gives autograd's output gradients;
    a residual network falls back to autograd and its diagonal GGN is the dense one."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.BatchNorm2d(3),
        nn.Conv2d(3, 4, 2, padding=1), nn.Tanh(), nn.MaxPool2d(3, stride=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3),
    ).double().eval()  # fmt: skip
    inputs = torch.randn(6, 2, 9, 9, dtype=torch.float64)
    layers = curvature.posterior_layers(net, "all")
    columns = curvature.softmax_hessian_sqrt
    swept = curvature.backpropagate(net, layers, inputs, columns)
    assert net not in chain.NOT_CHAIN
    _, _, expected = curvature._autograd_columns(net, layers, inputs, columns)
    for ours, reference in zip(swept[2], expected, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-14)
    workspace: dict = {}  # a smaller sub-batch after a larger one uses the front of its buffers
    for count in (6, 4):
        fewer = curvature.backpropagate(net, layers, inputs[:count], columns, workspace)
    for ours, reference in zip(fewer[2], expected, strict=True):
        torch.testing.assert_close(ours, reference[:4], rtol=1e-12, atol=1e-14)
    kfac = curvature.backpropagate(net, layers, inputs, columns, kfac=True)  # channels-last
    assert kfac[2][0].transpose(2, 3).is_contiguous()
    for ours, reference in zip(kfac[2], expected, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-14)
    residual = Residual().double()
    inputs, _, loader = classification_data((2, 6, 6), dtype=torch.float64)
    diag = Laplace(residual, "diag").fit(loader)
    assert residual in chain.NOT_CHAIN
    torch.testing.assert_close(diag.ggn_diag, dense_ggn(residual, diag.params, inputs).diag())


@pytest.mark.parametrize("hessian", ["diag", "kron"])
def test_worker_threads_give_the_one_thread_fit(hessian):
    """Sub-batches shared among 3 worker threads (each with a copy of the network): the same
    sums up to rounding, and the caller's thread count is restored."""
    net = conv_bn_net().double()
    inputs, targets, _ = classification_data((2, 8, 8), n=300, dtype=torch.float64)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=150)
    one = Laplace(net, hessian).fit(loader, workers=1)
    torch.set_num_threads(2)
    try:
        three = Laplace(net, hessian).fit(loader, workers=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    torch.testing.assert_close(three.log_likelihood, one.log_likelihood, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        three.log_marginal_likelihood(), one.log_marginal_likelihood(), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        three.posterior_variance(), one.posterior_variance(), rtol=1e-10, atol=0
    )


def test_conv_patches_are_those_of_unfold():
    conv = nn.Conv2d(3, 2, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    layer = curvature.posterior_layers(nn.Sequential(conv), "all")[0]
    inputs = torch.randn(4, 3, 9, 7)
    expected = nn.functional.unfold(inputs, (3, 2), (2, 1), (1, 2), (2, 1)).transpose(1, 2)
    patches = curvature.layer_inputs(layer, inputs)  # columns in patch order
    order = curvature.patch_order(layer)
    torch.testing.assert_close(patches, expected[..., order], rtol=0, atol=0)
    weight_order = curvature.to_weight_order(layer, patches, (2,))
    torch.testing.assert_close(weight_order, expected, rtol=0, atol=0)


def test_conv_input_factor_from_row_products_is_the_sum_over_patches():
    """Σ_t a aᵀ of a padded stride-1 convolution from shared kernel-row products, summed over
    two batches, equals the sum over unfolded patches (float64, to 1e-12 relative)."""
    conv = nn.Conv2d(3, 2, (3, 4), padding=(1, 2)).double()
    layer = curvature.posterior_layers(nn.Sequential(conv), "all")[0]
    batches = [torch.randn(n, 3, 7, 6, dtype=torch.float64) for n in (4, 5)]
    patches = torch.cat([curvature.layer_inputs(layer, x) for x in batches]).flatten(0, 1)
    products = [curvature.row_products(layer, x) for x in batches]
    summed = [first + second for first, second in zip(*products, strict=True)]
    expected = patches.T @ patches
    torch.testing.assert_close(
        curvature.input_factor(summed), expected, rtol=1e-12, atol=1e-12 * expected.abs().max()
    )
    strided = nn.Conv2d(3, 2, 3, stride=2)
    assert curvature.row_products(curvature.posterior_layers(strided, "all")[0], batches[0]) is None


@pytest.mark.parametrize("hessian", ["diag", "kron"])
def test_draws_have_the_posterior_covariance(hessian):
    """8000 draws on a 3-parameter BLR: mean within 5 standard errors, covariance within 5%
    (diag: the diagonal precision; kron: exact here)."""
    _, targets, design, precision, mean = bayesian_linear_regression()
    posterior = blr_laplace(hessian, design, targets, mean, batch_size=30)
    covariance = (
        torch.linalg.inv(precision) if hessian == "kron" else torch.diag(1 / precision.diag())
    )
    generator = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(8000):
        posterior.sample(generator)
        draws.append(posterior.model.weight.detach()[0].clone())
    draws = torch.stack(draws)
    standard_error = (covariance.diag() / len(draws)).sqrt()
    assert ((draws.mean(0) - mean).abs() < 5 * standard_error).all()
    torch.testing.assert_close(draws.T.cov(), covariance, rtol=0.05, atol=0.05 * covariance.max())


def test_file_round_trip_reproduces_draws(tmp_path):
    net = conv_bn_net()
    _, _, loader = classification_data((2, 8, 8))
    posterior = Laplace(net, "kron", prior_precision=2.0).fit(loader)
    posterior.optimize_prior_precision("layerwise")
    posterior.sample(torch.Generator().manual_seed(3))
    path = posterior.save(tmp_path / "laplace-3.pt", epoch=3)
    posterior.sample(torch.Generator().manual_seed(5))
    expected = [p.clone() for p in net.parameters()]
    loaded = base.load(path, conv_bn_net())
    assert isinstance(loaded, Laplace) and loaded.config() == posterior.config()
    assert loaded.kind == "laplace" and not loaded.needs_bn_update
    torch.testing.assert_close(loaded.prior_precision, posterior.prior_precision)
    loaded.sample(torch.Generator().manual_seed(5))
    for a, b in zip(loaded.model.parameters(), expected, strict=True):
        assert torch.equal(a, b)
    assert get_method("laplace").kinds == ("laplace",)


def test_bad_input_is_one_sentence():
    with pytest.raises(UserError, match="hessian"):
        Laplace(mlp(), "full")
    with pytest.raises(UserError, match="subset"):
        Laplace(mlp(), "diag", subset="some")
    with pytest.raises(UserError, match="positive"):
        Laplace(mlp(), "diag", prior_precision=0.0)
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(UserError, match=r"'1' \(LayerNorm\).*last_layer"):
        Laplace(net, "kron")
    assert Laplace(net, "kron", subset="last_layer").num_params == 10
    with pytest.raises(UserError, match="not fitted"):
        Laplace(mlp(), "diag").sample()
