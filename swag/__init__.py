"""SWAG, MultiSWAG and their baselines (Wilson & Izmailov, 2020; Maddox et al., 2019).

`import swag` needs only torch, torchvision and numpy; heavier optional dependencies are
imported inside the functions that use them.
"""

__version__ = "0.1.0"
