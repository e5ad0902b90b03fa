"""The no-LLM captions writer on COCO and CUB."""

import random

from training.data import AttributeTable, CubDataset, load_class_split, load_coco_captions
from training.pairs.base import CocoCaptionSource, CubCaptionSource, cub_class_caption
from training.pairs.captions import CAPTION_TEMPLATES, CaptionPairWriter, caption_difference


def test_caption_difference_phrasing():
    text = caption_difference("A cat on a sofa.", "Two dogs in the snow. ", 0)
    assert text == "Unlike an image of two dogs in the snow, the first image shows a cat on a sofa."
    assert caption_difference("TV on a table", "a lamp", 1).startswith("The first image shows TV on a table")


def test_coco_caption_pairs(data_dir):
    images = load_coco_captions(data_dir, "test")
    captions = {im.path: im.captions for im in images}
    records = list(CaptionPairWriter(CocoCaptionSource(images)).pairs(100, random.Random(0)))
    assert len(records) == 100
    templates = set()
    for r in records:
        assert r.writer == "captions" and r.image_a != r.image_b
        assert r.caption_a in captions[r.image_a] and r.caption_b in captions[r.image_b]
        assert r.image_a.startswith("coco-mini/val2017/")
        templates.add(r.source["template"])
        assert r.text == caption_difference(r.caption_a, r.caption_b, r.source["template"])
    assert templates == set(range(len(CAPTION_TEMPLATES)))


def test_cub_caption_pairs_leave_out_reserved(data_dir):
    reserved = load_class_split()
    table = AttributeTable.from_cub(data_dir)
    dataset = CubDataset(data_dir, exclude_classes=reserved)
    records = list(CaptionPairWriter(CubCaptionSource(dataset, table, "train")).pairs(300, random.Random(2)))
    assert not {r.class_a for r in records} & set(reserved)
    assert not {r.class_b for r in records} & set(reserved)
    for r in records[:20]:
        assert r.caption_a == cub_class_caption(table, r.class_a)
        assert r.class_a.split("_")[-1] in r.caption_a
    assert cub_class_caption(table, "White_Pelican").startswith("a White Pelican, a very large white bird")
    assert cub_class_caption(table, "Indigo_Bunting").startswith("an Indigo Bunting, a small blue bird")
