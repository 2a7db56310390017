"""The 1-D regression study "deep ensembles as Bayesian model averaging": its data, named
settings, runners (`regression1d.py`) and Wasserstein-2 table (`wasserstein.py`)."""
