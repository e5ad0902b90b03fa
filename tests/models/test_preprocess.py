"""The numpy preprocessing must match open_clip's torchvision transform on real photos."""

import numpy as np
import pytest
from PIL import Image

from models.preprocess import PreprocessConfig, preprocess_images


@pytest.mark.parametrize("size,mode", [(224, "shortest"), (64, "shortest"), ((96, 128), "squash")])
def test_matches_open_clip_transform(cub_photos, data_dir, size, mode):
    from models._compat import import_open_clip

    open_clip = import_open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessConfig(image_size=size, resize_mode=mode)
    oc = image_transform_v2(
        PreprocessCfg(size=cfg.image_size if mode == "squash" else size, mode="RGB", mean=cfg.mean, std=cfg.std,
                      interpolation="bicubic", resize_mode=mode),
        is_train=False,
    )
    coco = sorted((data_dir / "coco-mini" / "val2017").glob("*.jpg"))[:3]
    images = [Image.open(p).convert("RGB") for p in [*cub_photos[:3], *coco]]
    ours = preprocess_images(images, cfg)
    theirs = np.stack([oc(im).numpy() for im in images])
    assert ours.shape == theirs.shape == (len(images), 3, *cfg.image_size)
    assert np.abs(ours - theirs).max() < 1e-5
    assert open_clip is not None


def test_tiny_and_extreme_aspect_images():
    cfg = PreprocessConfig(image_size=32)
    out = preprocess_images([Image.new("RGB", (1, 1), (255, 0, 0)), Image.new("RGB", (300, 2))], cfg)
    assert out.shape == (2, 3, 32, 32) and np.isfinite(out).all()


def test_config_round_trip():
    cfg = PreprocessConfig(image_size=(96, 128), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg


def test_table_normalisation_is_bit_identical_to_the_arithmetic(cub_photos, data_dir):
    """ToTensor + Normalize done per pixel in float32 == the lookup table preprocess_images uses."""
    from models.preprocess import _resize_crop

    cfg = PreprocessConfig(image_size=224, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    coco = sorted((data_dir / "coco-mini" / "val2017").glob("*.jpg"))[:2]
    images = [Image.open(p).convert("RGB") for p in [*cub_photos[:2], *coco]]
    expected = []
    for im in images:
        arr = np.asarray(_resize_crop(im, cfg), dtype=np.float32) / np.float32(255.0)
        arr = (arr - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
        expected.append(arr.transpose(2, 0, 1))
    got = preprocess_images(images, cfg)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.stack(expected))
