"""The everyday data splits: held-out ImageNet classes no training text names, AwA2 animals."""

from __future__ import annotations

import pytest

from training import everyday


def test_split_files_are_what_the_rule_chooses(data_dir):
    held, animals = everyday.choose_imagenet_heldout(data_dir)
    assert everyday.load_imagenet_heldout() == held
    assert everyday.load_awa2_heldout() == animals
    assert len(held) == everyday.N_IMAGENET_HELDOUT and len(animals) == everyday.N_AWA2_HELDOUT


def test_no_held_out_class_is_named_by_a_training_text(data_dir):
    classes = everyday.ImageNetClasses(data_dir)
    vocab = everyday.seen_vocabulary(data_dir)
    assert " zebra " in vocab and " elephant " in vocab  # COCO captions are in the vocabulary
    for i in everyday.load_imagenet_heldout():
        for name in (classes[i].label,) + classes[i].lemmas:
            assert everyday._words(name) not in vocab, (i, name)


def test_held_out_animals_have_only_held_out_photos(data_dir):
    held = set(everyday.load_imagenet_heldout())
    mapping = everyday.load_awa2_imagenet()
    for animal in everyday.load_awa2_heldout():
        assert mapping[animal] and set(mapping[animal]) <= held
    # every mapped AwA2 animal is a real AwA2 class, and indices are classifier indices
    from training.data import AttributeTable

    table = AttributeTable.from_awa2(data_dir)
    assert set(mapping) <= set(table.classes)
    assert all(0 <= i < 1000 for idx in mapping.values() for i in idx)


def test_imagenet_classes_follow_the_classifier_order(data_dir):
    classes = everyday.ImageNetClasses(data_dir)
    assert len(classes) == 1000
    assert classes[388].label == "giant panda" and (data_dir / classes[388].image).is_file()


def test_coco_val_categories(data_dir):
    photos = everyday.coco_category_photos(data_dir, "test")
    names = everyday.coco_category_names(data_dir)
    assert len(names) == 80 and len(photos) == 79
    assert all(p.startswith("coco-mini/val2017/") and cats and set(cats) <= set(names) for p, cats in photos)


def test_described_prompts_break_ties_between_names():
    """Two classes whose names embed alike, told apart by their WordNet descriptions: names alone
    get one photo right, the described ensemble both."""
    import numpy as np

    from training.evaluate import EmbeddedModel
    from training.evaluate_everyday import EverydaySetup, described_prompts, imagenet_heldout_top1
    from training.everyday import ImageNetClass

    a = ImageNetClass(0, "n0", "hound", (), "dog", "a dog with a red coat", "a.jpg")
    b = ImageNetClass(1, "n1", "hound dog", (), "dog", "a dog with a blue coat", "b.jpg")
    axis = {"red": np.array([1.0, 0, 0]), "blue": np.array([0, 1.0, 0])}

    def encode(texts):
        out = []
        for t in texts:  # every text is mostly the shared "dog" direction; a coat colour tips it
            v = np.array([0, 0, 1.0]) + sum(0.5 * axis[k] for k in axis if k in t)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

    images = {"a.jpg": np.array([0.8, 0, 0.6]), "b.jpg": np.array([0, 0.8, 0.6])}
    model = EmbeddedModel("toy", "toy", None, encode, images)
    setup = EverydaySetup(["a.jpg", "b.jpg"], [a.label, b.label], [described_prompts(a), described_prompts(b)],
                          [], [], [], [], [], None)
    assert imagenet_heldout_top1(model, setup) == 0.5
    assert imagenet_heldout_top1(model, setup, described=True) == 1.0
