"""The built-in /v1/explain vocabulary: every group, both directions, neutral or about a subject."""

from service.vocabulary import GROUPS, IMAGE_PHRASES, NEUTRAL_PHRASES, SUBJECT_PHRASES, difference_vocabulary


def test_every_group_has_sentences_in_both_forms():
    for group in GROUPS:
        assert SUBJECT_PHRASES.get(group) or IMAGE_PHRASES.get(group), group
        assert NEUTRAL_PHRASES.get(group) or IMAGE_PHRASES.get(group), group


def test_neutral_and_subject_forms():
    neutral = difference_vocabulary()
    assert "The first image shows something larger than the second." in neutral
    assert "The first image shows something smaller than the second." in neutral
    assert not any("bird" in t or "animal" in t for t in neutral)
    animal = difference_vocabulary("animal")
    assert "The first animal is larger than the second." in animal
    assert "The first image is brighter than the second." in animal  # image-level attributes stay
    assert len(set(neutral)) == len(neutral) and len(set(animal)) == len(animal)
    assert len(neutral) % 2 == 0  # (more, less) pairs
