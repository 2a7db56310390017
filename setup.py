"""Install the `swag` library and the `ubdl_data` CIFAR-10-C generator."""

from pathlib import Path

from setuptools import find_packages, setup

requirements = Path(__file__).with_name("requirements.txt").read_text().split()

extras = {
    "cifar_c": ["wand>=0.6", "scikit-image>=0.22", "opencv-python>=4.8", "imagecorruptions>=1.1"],
    "gp": ["gpytorch>=1.11"],
    "laplace": ["laplace-torch>=0.3"],
    "notebooks": ["jupyter", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],
}
extras["dev"] = ["pytest>=8", "ruff>=0.5", "torchmetrics>=1.3"] + [
    dep for name in ("cifar_c", "gp", "laplace", "notebooks") for dep in extras[name]
]

setup(
    name="understandingbdl",
    version="0.1.0",
    description=(
        "SWAG, MultiSWAG and baselines: a modern reproduction of 'Bayesian Deep Learning and "
        "a Probabilistic Perspective of Generalization' (Wilson & Izmailov, 2020)."
    ),
    packages=find_packages(include=["swag", "swag.*", "ubdl_data", "ubdl_data.*"]),
    python_requires=">=3.10",
    install_requires=requirements,
    extras_require=extras,
)
