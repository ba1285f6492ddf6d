"""s18exp: Hydra-configured experiments with a plain PyTorch loop."""

__version__ = "0.1.0"
