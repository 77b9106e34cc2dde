"""sead: on-policy distillation of language models with entropy-guided token zones (SEAD).

Submodules are imported on use (``import sead.divergence``); importing ``sead`` does no work.
"""

__version__ = "0.1.0"
