import numpy as np
import pytest

from models.difference import (
    Hint,
    attribute_scores,
    class_embeddings,
    compare,
    compare_probability,
    composed_query,
    comparative_prompting,
    fill_template,
    normalize,
    pair_difference,
    rank,
    softmax,
    template_error,
    zero_shot_logits,
)

rng = np.random.default_rng(0)


def test_pair_difference_is_unit_and_matches_formula():
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) * 3
    d = pair_difference(a, b)
    assert d.shape == (5, 16) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    expected = (na - nb) / np.linalg.norm(na - nb, axis=1, keepdims=True)
    np.testing.assert_allclose(d, expected, atol=1e-6)


def test_identical_images_give_zero_difference_and_score():
    a = rng.normal(size=8)
    assert np.allclose(pair_difference(a, a * 2.0), 0.0)
    assert compare(a, a, rng.normal(size=8)) == pytest.approx(0.0)


def test_compare_is_antisymmetric():
    a, b, t = rng.normal(size=(20, 32)), rng.normal(size=(20, 32)), rng.normal(size=(20, 32))
    np.testing.assert_allclose(compare(a, b, t), -compare(b, a, t), atol=1e-6)
    assert np.all(np.abs(compare(a, b, t)) <= 1.0 + 1e-6)


def test_rank_is_consistent_with_compare():
    images, text = rng.normal(size=(30, 24)), rng.normal(size=24)
    order, scores = rank(images, text)
    assert np.all(np.diff(scores) <= 0)
    for hi, lo in zip(order[:-1], order[1:]):
        assert compare(images[hi], images[lo], text) > 0
    top, _ = rank(images, text, top_k=5)
    assert list(top) == list(order[:5])
    np.testing.assert_allclose(attribute_scores(images, text)[order], scores)


def test_class_embeddings_template_ensemble():
    table = {}

    def fake_text_encoder(prompts):  # deterministic per prompt
        for p in prompts:
            table.setdefault(p, np.random.default_rng(abs(hash(p)) % 2**32).normal(size=12))
        return np.stack([table[p] for p in prompts])

    templates = ["a photo of a {}.", "a drawing of a {}."]
    w = class_embeddings(["cat", "dog"], fake_text_encoder, templates)
    assert w.shape == (2, 12)
    mean_cat = normalize(np.stack([table["a photo of a cat."], table["a drawing of a cat."]])).mean(0)
    np.testing.assert_allclose(w[0], mean_cat / np.linalg.norm(mean_cat), atol=1e-6)


def test_zero_shot_logits_and_softmax():
    images, classes = rng.normal(size=(4, 10)), normalize(rng.normal(size=(3, 10)))
    logits = zero_shot_logits(images, classes, scale=50.0)
    assert logits.shape == (4, 3)
    np.testing.assert_allclose(logits, 50.0 * normalize(images) @ classes.T, atol=1e-4)
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert np.all(np.argmax(p, 1) == np.argmax(logits, 1))


def test_comparative_prompting_moves_only_hinted_classes():
    names = ["crow", "raven", "sparrow"]
    classes = normalize(rng.normal(size=(3, 16)))
    hint = Hint("crow", "raven", "a crow is smaller than a raven")
    f_t = normalize(rng.normal(size=16))
    out = comparative_prompting(names, classes, [hint], f_t[None], alpha=0.8)  # one-sided by default
    np.testing.assert_allclose(out[2], classes[2], atol=1e-7)  # unhinted: unchanged
    np.testing.assert_allclose(out[0], classes[0], atol=1e-7)  # a unchanged when not symmetric
    estimate = classes[0] - f_t
    expected = normalize(0.8 * classes[1] + 0.2 * estimate)
    np.testing.assert_allclose(out[1], expected, atol=1e-6)
    # moved toward the estimate
    assert out[1] @ normalize(estimate) > classes[1] @ normalize(estimate)


def test_comparative_prompting_symmetric_updates_both_members():
    names = ["a", "b", "c"]
    classes = normalize(rng.normal(size=(3, 8)))
    f_t = normalize(rng.normal(size=8))
    out = comparative_prompting(names, classes, [Hint("a", "b", "t")], f_t[None], alpha=0.5, symmetric=True)
    np.testing.assert_allclose(out[0], normalize(0.5 * classes[0] + 0.5 * (classes[1] + f_t)), atol=1e-6)
    np.testing.assert_allclose(out[1], normalize(0.5 * classes[1] + 0.5 * (classes[0] - f_t)), atol=1e-6)
    np.testing.assert_allclose(out[2], classes[2], atol=1e-7)
    # alpha = 1 is a no-op; no hints is a no-op
    np.testing.assert_allclose(comparative_prompting(names, classes, [Hint("a", "b", "t")], f_t[None], alpha=1.0), classes, atol=1e-6)
    np.testing.assert_allclose(comparative_prompting(names, classes, [], np.zeros((0, 8))), classes, atol=1e-7)


def test_comparative_prompting_rejects_unknown_class_and_bad_alpha():
    classes = normalize(rng.normal(size=(2, 4)))
    with pytest.raises(KeyError):
        comparative_prompting(["a", "b"], classes, [Hint("a", "zzz", "t")], np.ones((1, 4)))
    with pytest.raises(ValueError):
        comparative_prompting(["a", "b"], classes, [], np.zeros((0, 4)), alpha=1.5)


def test_compare_probability_is_monotone_and_half_at_zero():
    p = compare_probability(np.array([-0.5, 0.0, 0.5]))
    assert p[1] == pytest.approx(0.5)
    assert p[0] < p[1] < p[2]


def test_composed_query_recovers_the_target_by_the_pc_clip_identity():
    """f(T) = d(I1, I2) and w = ||n(g(I1)) - n(g(I2))|| give exactly q = n(g(I1)) (the training identity)."""
    g1, g2 = rng.normal(size=(2, 32)).astype(np.float32) * 3.0  # unnormalised image embeddings
    f_t = pair_difference(g1, g2)
    c = float(np.linalg.norm(normalize(g1) - normalize(g2)))
    q = composed_query(g2, f_t[None, :], [c])
    np.testing.assert_allclose(q, normalize(g1), atol=1e-5)
    # a negative weight walks the other way: from I1 back to I2 ("less of T")
    np.testing.assert_allclose(composed_query(g1, f_t[None, :] * 5.0, [-c]), normalize(g2), atol=1e-5)
    # and the target then ranks first among other images
    others = rng.normal(size=(50, 32)).astype(np.float32)
    order, _ = rank(np.vstack([others, g1[None, :]]), q)
    assert order[0] == 50


def test_composed_query_weights_add_up_and_scale():
    ref = rng.normal(size=16).astype(np.float32)
    mods = rng.normal(size=(2, 16)).astype(np.float32)
    q = composed_query(ref, mods, [0.5, -0.25])
    expected = normalize(normalize(ref) + 0.5 * normalize(mods[0]) - 0.25 * normalize(mods[1]))
    np.testing.assert_allclose(q, expected, atol=1e-6)
    assert abs(float(np.linalg.norm(q)) - 1.0) < 1e-5
    # larger positive weight -> closer to the modifier's direction
    near = [float(composed_query(ref, mods[:1], [w]) @ normalize(mods[0])) for w in (0.0, 0.5, 2.0)]
    assert near[0] < near[1] < near[2]
    np.testing.assert_allclose(composed_query(ref, np.zeros((0, 16)), []), normalize(ref), atol=1e-6)
    with pytest.raises(ValueError):
        composed_query(ref, mods, [1.0])


@pytest.mark.parametrize("template", ["{:x>500000000}N", "{:x>40000000000}", "{0}", "a {} and {}", "{name}", "a {{}} {}", "}{", "{"])
def test_templates_other_than_one_literal_placeholder_are_refused(template):
    assert template_error(template) is not None


@pytest.mark.parametrize("template,filled", [("a photo of a {}.", "a photo of a crow."), ("a photo of", "a photo of crow"), ("{}", "crow")])
def test_templates_are_filled_by_substitution(template, filled):
    assert template_error(template) is None
    assert fill_template(template, "crow") == filled
    assert fill_template(template, "{0} {:>9}") == filled.replace("crow", "{0} {:>9}")  # braces in a class name stay as they are
