"""Evaluation metrics on hand-made embeddings, and a small real run of `pcclip eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.evaluate import (
    attribute_spearman,
    confusion_matrix,
    difference_correct,
    mean_sem,
    most_confused_pairs,
    top1,
    zero_shot_predictions,
)


def test_difference_correct_on_known_embeddings():
    e = np.eye(3, dtype=np.float32)
    a = np.stack([e[0], e[1], e[2], e[0]])
    b = np.stack([e[1], e[0], e[0], e[2]])
    # d(a, b) ~ a - b; the texts point along +e0, +e0, -e2, +e2
    texts = np.stack([e[0], e[0], -e[2], e[2]])
    correct = difference_correct(a, b, texts)
    assert correct.tolist() == [True, False, False, False]
    assert difference_correct(b, a, texts).tolist() == [False, True, True, True]  # antisymmetric
    assert correct.mean() == pytest.approx(0.25)


def test_attribute_spearman_known_ranking():
    # image i sits at angle theta_i from the text direction: scores cos(theta) fall with i
    angles = np.array([0.1, 0.4, 0.8, 1.2, 1.5])
    images = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    text = np.array([1.0, 0.0])
    assert attribute_spearman(images, text, np.array([50, 40, 30, 20, 10])) == pytest.approx(1.0)
    assert attribute_spearman(images, text, np.array([10, 20, 30, 40, 50])) == pytest.approx(-1.0)
    # one swap among five: rho = 1 - 6 * 2 / (5 * 24) = 0.9
    assert attribute_spearman(images, text, np.array([50, 40, 20, 30, 10])) == pytest.approx(0.9)
    assert np.isnan(attribute_spearman(images, text, np.full(5, 7.0)))  # a constant attribute has no ranking


def test_zero_shot_confusion_and_most_confused_pairs():
    classes = np.eye(3, dtype=np.float32)
    images = np.array([[1, 0.1, 0], [0.2, 1, 0], [0.9, 1, 0], [0, 0.8, 1], [0, 1, 0.5], [1, 0, 0.2]], dtype=np.float32)
    labels = np.array([0, 1, 0, 2, 2, 0])
    preds = zero_shot_predictions(images, classes)
    assert preds.tolist() == [0, 1, 1, 2, 1, 0]
    assert top1(preds, labels) == pytest.approx(4 / 6)
    conf = confusion_matrix(preds, labels, 3)
    assert conf.tolist() == [[2, 1, 0], [0, 1, 0], [0, 1, 1]]
    assert most_confused_pairs(conf, 5) == [(0, 1, 1), (1, 2, 1)]  # (0, 2) has no mistakes


def test_mean_sem():
    r = mean_sem([0.5, 0.7, 0.6])
    assert r["mean"] == pytest.approx(0.6) and r["sem"] == pytest.approx(0.1 / np.sqrt(3)) and r["n"] == 3
    assert mean_sem([float("nan")])["mean"] is None


def test_pcclip_eval_smoke_run_writes_report_and_plots(tmp_path, data_dir):
    from PIL import Image

    from pcclip.cli import main
    from training.data import RESERVED_SPLIT, load_class_split

    split = tmp_path / "reserved.txt"
    split.write_text("\n".join(load_class_split(RESERVED_SPLIT)[:4]) + "\n")

    out = tmp_path / "eval"
    # 4 reserved classes + 4 others, 2 test photos each: 16 photos
    rc = main(["eval", "--model", "pcclip-mini:untrained", "--base", "pcclip-mini:untrained", "--out", str(out),
               "--data", str(data_dir), "--seeds", "2", "--pairs-per-seed", "20", "--max-photos-per-class", "2",
               "--max-classes", "8", "--split-file", str(split), "--confused-pairs", "3",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"base", "pcclip"}
    for name in ("base", "pcclip"):
        d = report["difference_classification"][name]
        assert d["pairs_per_seed"] == 20 and len(d["per_seed"]) == 2
        assert 0.0 <= d["accuracy"]["mean"] <= 1.0
        assert set(d["per_group"]) <= {"size", "colour", "pattern", "shape"}
        z = report["zero_shot"][name]
        assert z["classes_all"] == 8 and z["photos_all"] == 16 and z["classes_reserved"] == 4 and z["photos_reserved"] == 8
        assert len(report["rank_by_attribute"][name]["per_attribute"]) == 8
    # the same weights give the same numbers on both sides
    assert report["difference_classification"]["base"] == report["difference_classification"]["pcclip"]
    assert report["zero_shot"]["base"]["top1_all"] == report["zero_shot"]["pcclip"]["top1_all"]
    hints = report["zero_shot"]["pcclip"]["comparative_prompting"]["hints"]
    assert hints and all(h["text"] for h in hints)
    for png in ("summary.png", "ranked_strip.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 300
    # the everyday evaluations run too, on their held-out photos
    from training.evaluate_everyday import build_everyday_setup

    everyday = build_everyday_setup(data_dir)
    e = report["everyday"]
    assert e["data"]["imagenet_heldout_photos"] == 200 and e["data"]["coco_val_photos"] == 79
    for key in ("imagenet_heldout_top1", "imagenet_heldout_top1_described", "coco_val_top1"):
        assert set(e[key]) == {"base", "pcclip"} and all(0.0 <= v <= 1.0 for v in e[key].values())
    # one image tower -> one cache entry holding the 16 CUB test photos and the everyday photos
    cached = list((tmp_path / "cache").rglob("features.pt"))
    assert len(cached) == 1
    import torch

    assert torch.load(cached[0], weights_only=True)["features"].shape == (16 + len(everyday.paths()), 384)


def test_eval_text_embeddings_match_the_served_encoder(tmp_path, data_dir):
    from training.evaluate import embed_model

    m = embed_model("pcclip", "pcclip-mini:untrained", [], data_dir, tmp_path / "cache", batch_size=4)
    texts = ["a larger bird", "The first bird has a red crown, while the second has a black crown.", "a larger bird",
             "a photo of a black footed albatross.", "x", "Unlike the second, the first bird has a striped breast."]
    ours = m.encode_texts(texts)
    served = m.loaded.encoder(batch_size=4).encode_texts(texts)
    assert ours.shape == (6, 384)
    np.testing.assert_allclose(ours, served, atol=2e-5)
