"""pcclip models core: loading, preprocessing, tokenization, encoders, and the difference math.

Imports neither the service (FastAPI) nor the trainer. Torch is imported only by the torch paths.
"""

from models.difference import (
    Hint,
    attribute_scores,
    class_embeddings,
    compare,
    comparative_prompting,
    normalize,
    pair_difference,
    rank,
    softmax,
    zero_shot_logits,
)
from models.encoders import Encoder
from models.images import ImageDecodeError, ImageLimits, decode_image
from models.loading import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_encoder, load_model, parse_spec
from models.preprocess import PreprocessConfig, preprocess_images

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "Hint",
    "ImageDecodeError",
    "ImageLimits",
    "LoadedModel",
    "ModelLoadError",
    "PreprocessConfig",
    "attribute_scores",
    "class_embeddings",
    "compare",
    "comparative_prompting",
    "decode_image",
    "load_encoder",
    "load_model",
    "normalize",
    "pair_difference",
    "parse_spec",
    "preprocess_images",
    "rank",
    "softmax",
    "zero_shot_logits",
]
