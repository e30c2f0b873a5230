"""arcforge: a GLM-4.5-style pre-training data factory."""

__version__ = "0.1.0"
