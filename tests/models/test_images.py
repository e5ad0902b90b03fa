import io

import numpy as np
import pytest
from PIL import Image

from models.images import ImageDecodeError, ImageLimits, decode_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_jpeg(cub_photos) -> bytes:
    return cub_photos[0].read_bytes()


def test_real_jpeg_decodes_to_rgb(real_jpeg):
    img = decode_image(real_jpeg)
    assert img.mode == "RGB" and min(img.size) > 50


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda jpg: jpg[: len(jpg) // 2], id="truncated-jpeg"),
        pytest.param(lambda jpg: b"", id="zero-bytes"),
        pytest.param(lambda jpg: b"this is a text file, not an image\n" * 10, id="text-file"),
        pytest.param(lambda jpg: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, id="png-header-garbage"),
    ],
)
def test_undecodable_inputs_raise_typed_error(real_jpeg, make):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(make(real_jpeg))
    assert info.value.code == "invalid_image"


def test_non_bytes_raise_typed_error():
    with pytest.raises(ImageDecodeError):
        decode_image("not bytes")  # type: ignore[arg-type]


def test_one_pixel_image():
    img = decode_image(_encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (10, 200, 30)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    img = decode_image(_encode(cmyk, "JPEG", quality=95))
    assert img.mode == "RGB" and img.size == (16, 8)
    r, g, b = img.getpixel((8, 4))
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped():
    arr = np.full((4, 6), 32768, dtype=np.uint16)  # mid grey in 16 bits
    data = _encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = decode_image(data)
    assert img.mode == "RGB"
    assert abs(img.getpixel((0, 0))[0] - 128) <= 1  # not 255 (clipped) and not 0


def test_png_with_alpha_is_flattened_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    img = decode_image(_encode(rgba, "PNG"))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    r, _, _ = decode_image(_encode(half, "PNG")).getpixel((0, 0))
    assert 120 <= r <= 130


def test_webp_and_greyscale_and_palette():
    assert decode_image(_encode(Image.new("RGB", (8, 8), (1, 2, 3)), "WEBP", lossless=True)).getpixel((0, 0)) == (1, 2, 3)
    assert decode_image(_encode(Image.new("L", (8, 8), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([9, 8, 7] * 256)
    assert decode_image(_encode(pal, "PNG")).getpixel((0, 0)) == (9, 8, 7)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(img, "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (10, 20)


def test_pixel_limit_refuses_before_decoding():
    data = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, ImageLimits(max_pixels=5_000))
    assert info.value.code == "image_too_large"


def test_decompression_bomb_is_refused():
    bomb = _encode(Image.new("1", (12_000, 12_000), 0), "PNG", optimize=True)  # 144 Mpx in ~20 kB
    assert len(bomb) < 200_000
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bomb)
    assert info.value.code == "image_too_large"


def test_byte_limit():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"\xff" * 2000, ImageLimits(max_bytes=1000))
    assert info.value.code == "image_too_large"


def test_error_names_the_item():
    err = ImageDecodeError("bad", "invalid_image").with_index(3)
    assert err.index == 3 and "image 3" in str(err) and err.code == "invalid_image"


def _jpeg(size, fmt="JPEG") -> bytes:
    return _encode(Image.new("RGB", size, (120, 30, 200)), fmt)


def test_jpeg_draft_decodes_reduced_while_both_sides_stay_large_enough():
    assert decode_image(_jpeg((1000, 800)), min_side=224).size == (500, 400)  # 1/2: both sides >= 224
    assert decode_image(_jpeg((2000, 1800)), min_side=224).size == (250, 225)  # 1/8
    assert decode_image(_jpeg((1000, 800))).size == (1000, 800)  # off by default
    assert decode_image(_jpeg((400, 300)), min_side=224).size == (400, 300)  # too small to reduce
    assert decode_image(_jpeg((1000, 800), "PNG"), min_side=224).size == (1000, 800)  # JPEG only
