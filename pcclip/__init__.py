"""pcclip: difference-aware CLIP embeddings (PC-CLIP), trained offline and served over HTTP."""

__version__ = "0.1.0"
