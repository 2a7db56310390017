"""Posteriors over network weights behind one contract (`base.Posterior`), and their methods.

Every posterior is built from a model instance, fitted or collected by its own step, and then
used the same way: `sample(generator)` writes one weight draw into `.model`, `save(path)` and
`load(path, model)` round-trip it (base.py). Registered kinds:

- "swag", "swa" (swag.py): SWA and SWA-Gaussian (Maddox et al., 2019);
- "checkpoint" (checkpoint.py): fixed trained weights, one deep-ensemble member;
- "deep_ensemble" (ensembles.py): M members trained all at once with vmap (1-D regression);
- "vi" (vi.py): mean-field Bayes by backprop with a closed-form Gaussian KL;
- "laplace" (laplace.py, curvature.py): diagonal and KFAC GGN Laplace with its evidence;
- "samples" (sample_bank.py): a bank of MCMC draws, e.g. from SGLD (sgld.py) or HMC;
- `hmc` (hmc.py): batched full-batch Hamiltonian Monte Carlo over any `nn.Module`.

`eval_multiswag.py --method` choices, labels and colours come from `methods.py`.
"""

from swag.posteriors.base import (
    Posterior,
    detect_kind,
    load,
    posterior_class,
    posterior_kinds,
    register_posterior,
)
from swag.posteriors.checkpoint import Checkpoint
from swag.posteriors.ensembles import DeepEnsemble, initial_members, map_loss, train_members
from swag.posteriors.flat import FlatModel, assign_parameters, flatten_parameters
from swag.posteriors.hmc import (
    HMCResult,
    gaussian_log_posterior,
    hmc,
    leapfrog,
    split_rhat,
    value_and_grad,
)
from swag.posteriors.laplace import Laplace
from swag.posteriors.methods import (
    Method,
    SamplingOptions,
    get_method,
    import_module_or_file,
    method_names,
    register_method,
)
from swag.posteriors.sample_bank import SampleBank, Thinning
from swag.posteriors.sgld import SGLD, full_batch_sgld, noise_factor_for
from swag.posteriors.swag import SWA, SWAG
from swag.posteriors.vi import MeanFieldVI, gaussian_kl

__all__ = [
    "SGLD",
    "SWA",
    "SWAG",
    "SampleBank",
    "Thinning",
    "Checkpoint",
    "DeepEnsemble",
    "FlatModel",
    "HMCResult",
    "Laplace",
    "MeanFieldVI",
    "Method",
    "Posterior",
    "SamplingOptions",
    "assign_parameters",
    "detect_kind",
    "flatten_parameters",
    "full_batch_sgld",
    "gaussian_kl",
    "gaussian_log_posterior",
    "get_method",
    "hmc",
    "import_module_or_file",
    "initial_members",
    "leapfrog",
    "load",
    "map_loss",
    "method_names",
    "noise_factor_for",
    "posterior_class",
    "posterior_kinds",
    "register_method",
    "register_posterior",
    "split_rhat",
    "train_members",
    "value_and_grad",
]
