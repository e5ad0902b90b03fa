"""Readers of the shared data and the reserved-class split, on the real files."""

import numpy as np
import pytest

from training.data import (RESERVED_SPLIT, AttributeTable, CubDataset, choose_reserved_classes,
                           load_class_split, load_coco_captions, size_score)


@pytest.fixture(scope="module")
def cub(data_dir):
    return CubDataset(data_dir)


@pytest.fixture(scope="module")
def cub_table(data_dir):
    return AttributeTable.from_cub(data_dir)


def test_cub_dataset_reads_classes_images_and_split(cub, data_dir):
    assert len(cub.classes) == 100 and len(cub) == 5902
    train, test = cub.split("train"), cub.split("test")
    assert len(train) + len(test) == 5902
    assert {len(train), len(test)} == {2999, 2903}
    assert not {im.image_id for im in train} & {im.image_id for im in test}
    for image in cub.images[::500]:
        assert image.path.startswith(f"cub100/images/{image.class_name}/")
        assert (data_dir / image.path).is_file()
    assert all(cub.images_of(c, "train") and cub.images_of(c, "test") for c in cub.classes)
    with pytest.raises(ValueError):
        cub.split("validation")


def test_reserved_split_is_excluded_from_every_reader(cub, data_dir):
    reserved = load_class_split()
    assert 15 <= len(reserved) <= 25 and set(reserved) <= set(cub.classes)
    kept = CubDataset(data_dir, exclude_classes=reserved)
    assert len(kept.classes) == 100 - len(reserved)
    assert not {im.class_name for im in kept.images} & set(reserved)
    assert len(kept) == len(cub) - sum(len(cub.images_of(c)) for c in reserved)
    only = CubDataset(data_dir, only_classes=reserved)
    assert {im.class_name for im in only.images} == set(reserved)
    with pytest.raises(ValueError, match="unknown CUB classes"):
        CubDataset(data_dir, exclude_classes=["Not_A_Bird"])


def test_reserved_file_is_reproducible_and_spread(cub, cub_table):
    reserved = load_class_split(RESERVED_SPLIT)
    assert reserved == choose_reserved_classes(cub, cub_table, k=len(reserved))
    sizes = [size_score(cub_table, c) for c in reserved]
    assert max(sizes) - min(sizes) > 2.0  # from small songbirds to the pelican
    colours = [a for a in cub_table.attributes if a.startswith("has_primary_color::")]
    dominant = {max(colours, key=lambda a: cub_table.value(c, a)) for c in reserved}
    assert len(dominant) >= 6
    families = {c.split("_")[-1] for c in reserved}
    assert len(families) == len(reserved)


def test_load_class_split_skips_comments_and_rejects_duplicates(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("# reserved\nMallard\n\nGadwall  # a duck\n")
    assert load_class_split(path) == ["Mallard", "Gadwall"]
    path.write_text("Mallard\nMallard\n")
    with pytest.raises(ValueError):
        load_class_split(path)


def test_cub_attribute_table(cub_table, cub):
    assert len(cub_table.classes) == 200 and len(cub_table.attributes) == 312
    assert all(cub_table.has_class(c) for c in cub.classes)
    groups = cub_table.groups()
    assert len(groups["has_size"]) == 5 and len(groups["has_crown_color"]) == 15
    very_large = "has_size::very_large_(32_-_72_in)"
    assert max(cub_table.classes, key=lambda c: cub_table.value(c, very_large)) == "White_Pelican"
    sums = np.array([sum(cub_table.value(c, a) for a in groups["has_size"]) for c in cub.classes])
    assert np.all((sums > 90) & (sums < 110))
    assert size_score(cub_table, "White_Pelican") > size_score(cub_table, "Anna_Hummingbird") + 2


def test_awa2_table(data_dir):
    table = AttributeTable.from_awa2(data_dir)
    assert len(table.classes) == 50 and len(table.attributes) == 85
    assert table.value("elephant", "big") > table.value("mouse", "big")
    assert table.value("zebra", "stripes") > 80
    assert np.isnan(table.value("antelope", "black"))  # -1 in the file: unknown
    assert set(table.groups()) >= {"size", "colour", "pattern"}


def test_coco_captions(data_dir):
    train, test = load_coco_captions(data_dir, "train"), load_coco_captions(data_dir, "test")
    assert len(train) == 80 and len(test) >= 70
    assert not {im.image_id for im in train} & {im.image_id for im in test}
    for image in train[:5] + test[:5]:
        assert (data_dir / image.path).is_file() and len(image.captions) >= 5
        assert all(c == " ".join(c.split()) for c in image.captions)
