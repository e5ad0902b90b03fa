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
