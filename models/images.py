"""Image decoding: bytes in (JPEG, PNG, WebP, ...), RGB `PIL.Image` out, or a typed error.

Decoding applies the EXIF orientation, flattens alpha onto white, scales 16-bit and float images
to 8 bits, converts CMYK/palette/greyscale to RGB, and refuses decompression bombs before the
pixels are decoded.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; anything larger is refused before decoding


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode (or it is too large). `code` is machine-readable."""

    def __init__(self, message: str, code: str = "invalid_image", index: int | None = None):
        super().__init__(message)
        self.code = code
        self.index = index

    def with_index(self, index: int) -> "ImageDecodeError":
        """The same error, naming which item of a request it came from."""
        return ImageDecodeError(f"image {index}: {self}", self.code, index)


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied while decoding."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = 20 * 1024 * 1024


def without_reprs(err: Exception) -> str:
    """An exception's text without Python object reprs (`<_io.BytesIO object at 0x7f...>`): users read it."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)).strip() or type(err).__name__


def decode_image(data: bytes, limits: ImageLimits | None = None, min_side: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB image, or raise `ImageDecodeError`.

    `min_side`: a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling,
    Pillow's `draft`), the largest reduction that keeps both sides >= `min_side`; other formats,
    and JPEGs too small to reduce, decode at full size. Much cheaper for large photos; the pixels
    differ slightly from a full decode followed by the same resize (docs/benchmarks.md measures it).
    """
    limits = limits or ImageLimits()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected bytes, got {type(data).__name__}", "invalid_image")
    if len(data) == 0:
        raise ImageDecodeError("empty image data", "invalid_image")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            f"image is {len(data)} bytes, more than the limit of {limits.max_bytes}", "image_too_large"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError("image has no pixels", "invalid_image")
            if width * height > limits.max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, more than the limit "
                    f"of {limits.max_pixels}",
                    "image_too_large",
                )
            if min_side and img.format == "JPEG" and min(width, height) >= 2 * min_side:
                img.draft("RGB", (min_side, min_side))
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"image too large: {err}", "image_too_large") from err
    except Image.UnidentifiedImageError as err:
        raise ImageDecodeError("not an image file in a format this reads (JPEG, PNG, WebP, GIF, BMP, TIFF, ...)",
                               "invalid_image") from err
    except Exception as err:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, ...
        raise ImageDecodeError(f"cannot decode image: {without_reprs(err)}", "invalid_image") from err
    try:
        return to_rgb(ImageOps.exif_transpose(img))
    except Exception as err:
        raise ImageDecodeError(f"cannot convert image to RGB: {without_reprs(err)}", "invalid_image") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited onto white)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 65535.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            if mode == "I" and hi > 255:
                arr = arr / 65535.0 if hi <= 65535 else (arr - lo) / max(hi - lo, 1e-12)
            elif mode == "F" and hi <= 1.0 and lo >= 0.0:
                pass
            else:
                arr = arr / 255.0
        arr8 = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
