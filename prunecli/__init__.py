"""prunecli: train -> prune -> compress -> finetune -> evaluate for PyTorch CNNs.

Importing this package must stay cheap (no torch): `prunecli --help` imports it.
"""

__version__ = "0.1.0"
