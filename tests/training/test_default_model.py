"""The default-model pipeline's parts: cached text states, captions, held-out phrasings."""

from __future__ import annotations

import random

import pytest
import torch


@pytest.fixture(scope="module")
def untrained():
    from models.loading import load_model

    return load_model("pcclip-mini:untrained")


@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_last_layers_on_cached_states_equal_the_whole_text_tower(untrained, n_layers):
    from training.text_cache import LastLayersText

    texts = ["The first bird has a red crown, while the second has a black crown.", "a photo of a bird",
             "Unlike the second, the first bird has a striped breast."]
    ids = torch.from_numpy(untrained.tokenizer(texts))
    tail = LastLayersText(untrained.model, n_layers)
    states, mask, pooled = tail.cache_inputs(ids)
    assert states.shape[1] < ids.shape[1]  # cut to the longest text, not the context length
    with torch.no_grad():
        whole = untrained.model.encode_text(ids)
        assert torch.allclose(tail(states, mask), whole, atol=2e-3)  # fp16 states
        assert torch.allclose(untrained.model.text.head(pooled), whole, atol=1e-5)
    names = tail.trainable_names(untrained.model)
    assert "text.head.weight" in names
    assert any(f"encoder.layer.{5}." in n for n in names) == (n_layers > 0)
    assert not any("encoder.layer.3." in n for n in names)


@pytest.fixture(scope="module")
def writer(data_dir):
    from training.data import AttributeTable
    from training.pairs.attributes import AttributeWriter

    return AttributeWriter(AttributeTable.from_cub(data_dir), noun="bird")


def test_held_out_phrasings_are_the_last_template_of_each_claim(writer):
    from training.default_model import split_phrasings

    trained, held = split_phrasings(writer, "Cardinal", "White_Pelican")
    assert held and trained
    assert not {d.text for d in trained} & {d.text for d in held}
    claims = {(d.kind, d.attributes) for d in held}
    assert claims == {(d.kind, d.attributes) for d in trained}  # each fact keeps trained phrasings
    for d in held:
        same = [t.template for t in trained if (t.kind, t.attributes) == (d.kind, d.attributes)]
        assert d.template == max(same) + 1


def test_training_pairs_never_use_held_out_phrasings(writer):
    from training.default_model import make_pairs, split_phrasings

    photos = {c: [f"{c}/1.jpg", f"{c}/2.jpg"] for c in ("Cardinal", "White_Pelican", "Blue_Jay", "American_Crow")}
    pairs = make_pairs(photos, writer, 200, random.Random(0))
    assert len(pairs) == 200
    held = {d.text for a in photos for b in photos if a != b for d in split_phrasings(writer, a, b)[1]}
    assert not {p["text"] for p in pairs} & held
    assert all(p["class_a"] != p["class_b"] and p["image_a"].startswith(p["class_a"]) for p in pairs)


def test_class_captions_name_the_class_and_its_attributes(writer):
    from training.default_model import class_captions

    caps = class_captions(writer.table, "Cardinal", random.Random(0))
    assert caps[0] == "a photo of a cardinal."  # the zero-shot prompts come first
    assert len(caps) == 8 and all("cardinal" in c for c in caps)
    assert any("red" in c for c in caps[2:])


def test_short_comparatives_state_the_same_fact_about_the_first_bird(writer):
    from training.data import size_score
    from training.default_model import short_comparative

    classes = list(writer.table.classes)[:30]
    seen = set()
    for a in classes:
        for b in classes:
            for d in writer.describe(a, b):
                text = short_comparative(d)
                if text is None:
                    assert d.group == "shape" or d.kind == "head pattern"
                    continue
                seen.add(d.kind)
                assert text.startswith("a ") and "first" not in text and "second" not in text
                if d.kind == "size":
                    larger = size_score(writer.table, a) > size_score(writer.table, b)
                    assert text == ("a larger bird" if larger else "a smaller bird")
                elif d.group == "colour":
                    colour = d.attributes[0].split("::")[1]
                    assert colour[:4] in text  # a's dominant colour ("redder", "more olive")
                    assert writer.table.value(a, d.attributes[0]) > writer.table.value(b, d.attributes[0])
                elif d.group == "pattern":
                    assert ("more" in text) == (writer.table.value(a, d.attributes[0]) > writer.table.value(b, d.attributes[0]))
    assert {"size", "primary colour", "crown colour"} <= seen


def test_short_fraction_phrases_that_share_of_training_pairs_short(writer):
    from training.default_model import make_pairs

    photos = {c: [f"{c}/1.jpg"] for c in ("Cardinal", "White_Pelican", "Blue_Jay", "American_Crow")}
    long_only = make_pairs(photos, writer, 400, random.Random(0))
    mixed = make_pairs(photos, writer, 400, random.Random(0), short_fraction=0.5)
    short = [p for p in mixed if "first" not in p["text"].lower() and "second" not in p["text"].lower()]
    assert not [p for p in long_only if "first" not in p["text"].lower() and "second" not in p["text"].lower()]
    assert 0.25 < len(short) / len(mixed) < 0.6  # shapes have no short form
    assert {"a larger bird", "a smaller bird"} & {p["text"] for p in short}


def test_awa2_pairs_state_true_animal_facts(data_dir):
    """AwA2 training pairs: photos of two different animals, true size claims, short "a larger animal"."""
    from training.data import AttributeTable
    from training.default_model import make_pairs
    from training.pairs.attributes import AttributeWriter

    table = AttributeTable.from_awa2(data_dir)
    awa2 = AttributeWriter(table, noun="animal")
    photos = {a: [f"{a}/1.jpg"] for a in ("elephant", "hamster", "zebra", "gorilla", "squirrel")}
    pairs = make_pairs(photos, awa2, 300, random.Random(0), top_k=None, short_fraction=0.3)
    size = lambda c: table.row(c)["big"] - table.row(c)["small"]
    shorts = [p for p in pairs if p["text"] in ("a larger animal", "a smaller animal")]
    assert shorts
    for p in shorts:
        assert (p["text"] == "a larger animal") == (size(p["class_a"]) > size(p["class_b"]))
    assert all(p["class_a"] != p["class_b"] for p in pairs)


def test_imagenet_captions_and_coco_difference_pairs(data_dir):
    from training.data import load_coco_captions
    from training.default_model import coco_difference_pairs, imagenet_captions
    from training.everyday import ImageNetClasses

    panda = ImageNetClasses(data_dir)[388]
    caps = imagenet_captions(panda)
    assert caps[0] == "a photo of a giant panda." and any(panda.gloss in c for c in caps)
    coco = load_coco_captions(data_dir, "train")
    pairs = coco_difference_pairs(coco, 20, random.Random(0))
    by_path = {im.path: im.captions for im in coco}
    for p in pairs:
        assert p["image_a"] != p["image_b"] and p["source"] == "coco"
        assert p["image_a"].startswith("coco-mini/train2017/")  # never a val2017 photo
        assert any(c.strip(" .").lower()[:20] in p["text"].lower() for c in by_path[p["image_a"]])


def test_reevaluate_run_rewrites_the_everyday_section_and_targets(tmp_path, data_dir, monkeypatch):
    """`pcclip reproduce --reevaluate-run`: the shipped run's weights, evaluated again, give the
    report's own names-only figure, and the report gains the described figure and new targets."""
    import json
    import shutil

    from training.default_model import REPO, reevaluate_everyday

    monkeypatch.setenv("PCCLIP_CACHE", str(tmp_path / "cache"))
    shipped = json.loads((REPO / "docs" / "results" / "default_model_report.json").read_text())
    run = tmp_path / "run"
    run.mkdir()
    for name in ("pcclip-mini-base.safetensors", "pcclip-mini.safetensors"):
        shutil.copy(REPO / "models" / "weights" / name, run / name)
    report = dict(shipped, config=dict(shipped["config"], data=str(data_dir), seeds=1, pairs_per_seed=20))
    report["everyday"] = {k: v for k, v in report["everyday"].items() if k != "imagenet_heldout_top1_described"}
    (run / "report.json").write_text(json.dumps(report))
    out = reevaluate_everyday(run)
    e = out["everyday"]
    assert e["imagenet_heldout_top1"] == shipped["everyday"]["imagenet_heldout_top1"]
    assert set(e["imagenet_heldout_top1_described"]) == {"base", "pcclip"}
    assert e["data"]["animal_pairs"] == "1 seeds x 20"
    assert "described" in out["targets"][0]["figure"]
    assert json.loads((run / "report.json").read_text())["targets"] == out["targets"]
    assert "described" in (run / "results.md").read_text() and "--reevaluate-run" in (run / "results.md").read_text()


def _stage_problem():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(6, 4, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]


def _stage_loss(params, rng: random.Random) -> torch.Tensor:
    w, b = params
    x = torch.tensor([[rng.gauss(0, 1) for _ in range(6)] for _ in range(8)])
    return ((x @ w + b - 5.0) ** 2).mean()


@pytest.mark.parametrize("stage", ["base", "pcclip"])
def test_reproduce_stages_optimise_as_their_hand_written_loops_did(stage):
    """Each `pcclip reproduce` stage trains through `pcclip train`'s loop with the stage's own settings:
    the same weights, bit for bit, as the stage's former hand-written loop (copied here) on a toy problem
    whose schedule passes the warmup, whose gradients get clipped, and whose batches come from the stage's rng."""
    import math

    from training.default_model import ReproduceConfig, base_loop, pcclip_loop

    cfg = ReproduceConfig(base_steps=60, base_lr=1e-2, pc_steps=30, pc_lr=2e-2, pc_weight_decay=0.05)
    steps = cfg.base_steps if stage == "base" else cfg.pc_steps

    expected = _stage_problem()
    if stage == "base":
        opt = torch.optim.AdamW(expected, lr=cfg.base_lr, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / cfg.base_steps)))
    else:
        opt = torch.optim.AdamW(expected, lr=cfg.pc_lr, weight_decay=cfg.pc_weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.pc_steps)))
    rng, norms = random.Random(3), []
    for step in range(steps):
        loss = _stage_loss(expected, rng)
        opt.zero_grad()
        loss.backward()
        if stage == "pcclip":
            norms.append(float(torch.nn.utils.clip_grad_norm_(expected, 1.0)))
        opt.step()
        sched.step()
    if stage == "pcclip":
        assert max(norms) > 1.0  # the clipping mattered

    params = _stage_problem()
    loop = (base_loop if stage == "base" else pcclip_loop)(params, cfg)
    rng = random.Random(3)
    assert loop.run(lambda step: _stage_loss(params, rng), disable=True) == steps
    for p, q in zip(params, expected):
        assert torch.equal(p, q)
