"""Hypothesis on the image decoder: any bytes give an RGB image or an `ImageDecodeError`, never anything else."""

from __future__ import annotations

import io
import struct
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from models.images import ImageDecodeError, ImageLimits, decode_image

LIMITS = ImageLimits(max_pixels=4_000_000, max_bytes=2_000_000)


def _encoded(fmt: str, mode: str, size=(17, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color=None).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [_encoded("PNG", "RGBA"), _encoded("PNG", "I;16"), _encoded("JPEG", "RGB"), _encoded("GIF", "P"),
         _encoded("WEBP", "RGB"), _encoded("BMP", "L"), _encoded("TIFF", "CMYK"), _encoded("TIFF", "F")]


def _decode_or_typed_error(data: bytes) -> None:
    try:
        img = decode_image(data, LIMITS)
    except ImageDecodeError as err:
        assert err.code in ("invalid_image", "image_too_large")
        return
    assert img.mode == "RGB" and img.width * img.height <= LIMITS.max_pixels


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    _decode_or_typed_error(data)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12), st.integers(0, 10_000))
def test_corrupted_real_images(seed, flips, cut):
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    _decode_or_typed_error(bytes(data[: max(1, len(data) - cut % len(data))]))


def _png_header(width: int, height: int, depth: int = 8, color: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_declared_sizes_past_the_limit_are_refused_before_decoding(width, height):
    try:
        decode_image(_png_header(width, height), LIMITS)
    except ImageDecodeError as err:
        if width * height > LIMITS.max_pixels:
            assert err.code == "image_too_large"
        return
    assert width * height <= LIMITS.max_pixels
