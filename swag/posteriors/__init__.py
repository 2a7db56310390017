"""Posteriors over network weights: SWA/SWAG, and the baselines of the paper.

- `SWAG` (swag.py): SWA and SWA-Gaussian (Maddox et al., 2019).
- `hmc` (hmc.py): batched full-batch Hamiltonian Monte Carlo over any `nn.Module`.
- `DeepEnsemble` (ensembles.py): members trained all at once with vmap.
- `MeanFieldVI` (vi.py): Bayes by backprop with a closed-form Gaussian KL.
"""

from swag.posteriors.ensembles import DeepEnsemble, initial_members, map_loss, train_members
from swag.posteriors.hmc import (
    FlatModel,
    HMCResult,
    gaussian_log_posterior,
    hmc,
    leapfrog,
    split_rhat,
    value_and_grad,
)
from swag.posteriors.swag import SWAG
from swag.posteriors.vi import MeanFieldVI, gaussian_kl

__all__ = [
    "SWAG",
    "DeepEnsemble",
    "FlatModel",
    "HMCResult",
    "MeanFieldVI",
    "gaussian_kl",
    "gaussian_log_posterior",
    "hmc",
    "initial_members",
    "leapfrog",
    "map_loss",
    "split_rhat",
    "train_members",
    "value_and_grad",
]
