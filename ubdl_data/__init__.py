"""CIFAR-10-C style corruptions (Hendrycks & Dietterich, 2019) and the dataset generator.

`ubdl_data.corruptions` holds the 19 corruptions as pure batched functions and their registry;
`python ubdl_data/make_cifar_c.py` writes the corrupted test sets. See ubdl_data/README.md.
"""
