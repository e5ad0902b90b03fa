"""The PC-CLIP difference math, as plain numpy functions on embeddings.

Notation (Sam et al., "Finetuning CLIP to Reason about Pairwise Differences", arXiv 2409.09721):
g(I) is the image embedding, f(T) the text embedding, n(x) = x / ||x||.

- pair difference      d(I1, I2) = n( n(g(I1)) - n(g(I2)) )
- compare              s(T; I1, I2) = cos( f(T), d(I1, I2) )      (> 0: "the first has more of T")
- rank                 images ordered by  r_i = cos( f(T), n(g(I_i)) )  -- see `rank`
- zero-shot            logits_ic = scale * cos( n(g(I_i)), w_c ),  w_c = n( mean_t n(f(template_t(c))) )
- comparative prompt   for a hint (a, b, T) -- "T says how class a differs from class b" --
                       the estimate of b is  f_a - f_T  (optionally, symmetric, also of a:  f_b + f_T);
                       w'_c = n( alpha * w_c + (1 - alpha) * mean(estimates of c) )
- composed search      q = n( n(g(ref)) + sum_i w_i n(f(T_i)) ), scored by cos(q, n(g(I)))  -- see `composed_query`

Every function accepts float arrays of any float dtype and returns float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
DEFAULT_ALPHA = 0.8
_EPS = 1e-12


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """L2-normalise along `axis` (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, _EPS)).astype(np.float32)


def pair_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """d(a, b) = n(n(a) - n(b)); broadcasts over leading axes. Identical inputs give a zero vector."""
    return normalize(normalize(a) - normalize(b))


def compare(image_a: np.ndarray, image_b: np.ndarray, text: np.ndarray) -> np.ndarray:
    """cos(f(T), d(g(I_a), g(I_b))): > 0 means T describes how a differs from b.

    Shapes broadcast: ([D], [D], [D]) -> scalar array; ([N, D], [N, D], [D] or [N, D]) -> [N].
    """
    d = pair_difference(image_a, image_b)
    return np.sum(d * normalize(text), axis=-1).astype(np.float32)


def attribute_scores(images: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Scores r_i = cos(f(T), n(g(I_i))) of images [N, D] for one attribute text [D] -> [N].

    Consistency with `compare`: for normalised a, b, n(a) - n(b) is a positive multiple of
    d(a, b), so  sign(compare(a, b, T)) = sign(r_a - r_b).  Ranking by r therefore orders the
    images exactly as pairwise comparisons do (ties aside).
    """
    return (normalize(images) @ normalize(text)).astype(np.float32)


def rank(images: np.ndarray, text: np.ndarray, top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Order images [N, D] by how much they have the attribute T: (indices, scores), highest first."""
    scores = attribute_scores(images, text)
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[: max(0, int(top_k))]
    return order, scores[order]


def template_error(template: str) -> str | None:
    """Why `template` is not a class template (None if it is): at most one literal `{}`, no other braces.

    Templates are filled by plain substitution (`fill_template`), never `str.format`, so a format
    spec such as `{:x>500000000}` or a field such as `{0}` is refused here, not evaluated.
    """
    if template.count("{}") > 1:
        return "a template may contain '{}' only once"
    if "{" in template.replace("{}", "") or "}" in template.replace("{}", ""):
        return "a template may contain one '{}' where the class name goes, and no other braces"
    return None


def fill_template(template: str, classname: str) -> str:
    """The prompt of one class: `{}` replaced by the name, or the name appended when there is none."""
    return template.replace("{}", classname, 1) if "{}" in template else f"{template} {classname}"


def class_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every (class, template) prompt, class-major: [c0 t0, c0 t1, ..., c1 t0, ...]."""
    return [fill_template(t, c) for c in classnames for t in templates]


def class_embeddings(
    classnames: Sequence[str],
    encode_texts: Callable[[list[str]], np.ndarray],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> np.ndarray:
    """Template ensemble: w_c = n(mean_t n(f(fill_template(template_t, c)))) -> [C, D]."""
    if not templates:
        raise ValueError("need at least one template")
    return ensemble_class_embeddings(encode_texts(class_prompts(classnames, templates)), len(classnames))


def ensemble_class_embeddings(prompt_embeddings: np.ndarray, n_classes: int) -> np.ndarray:
    """The template ensemble of already-encoded `class_prompts` [C*T, D] -> [C, D]."""
    emb = normalize(np.asarray(prompt_embeddings)).reshape(int(n_classes), -1, np.shape(prompt_embeddings)[-1])
    return normalize(emb.mean(axis=1))


def zero_shot_logits(images: np.ndarray, classes: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """logits [N, C] = scale * n(images) @ classes.T."""
    return (float(scale) * (normalize(images) @ normalize(classes).T)).astype(np.float32)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Hint:
    """`text` says how class `a` differs from class `b` ("a crow is larger than a raven")."""

    a: str
    b: str
    text: str


def comparative_prompting(
    classnames: Sequence[str],
    class_embs: np.ndarray,
    hints: Iterable[Hint],
    hint_embs: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    symmetric: bool = False,
) -> np.ndarray:
    """Correct class embeddings [C, D] with difference hints (PC-CLIP comparative prompting).

    For a hint (a, b, T) with text embedding f_T, the estimate of class b is f_a - f_T, as in the
    official implementation (the default). With `symmetric=True` the same hint also gives the
    estimate f_b + f_T of class a. The one-sided form is the default because it did better on
    validation photos of seen classes (see the README's Training section). Each class c with
    estimates gets w'_c = n(alpha * w_c + (1 - alpha) * mean(estimates of c)); classes without hints
    are returned unchanged. Estimates use the *uncorrected* embeddings, so the result does not
    depend on hint order.
    """
    hints = list(hints)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = normalize(class_embs)
    if not hints:
        return base.copy()
    hint_embs = normalize(np.asarray(hint_embs).reshape(len(hints), -1))
    index = {name: i for i, name in enumerate(classnames)}
    estimates: dict[int, list[np.ndarray]] = {}
    for hint, f_t in zip(hints, hint_embs):
        for name in (hint.a, hint.b):
            if name not in index:
                raise KeyError(f"hint names unknown class {name!r}")
        ia, ib = index[hint.a], index[hint.b]
        estimates.setdefault(ib, []).append(base[ia] - f_t)
        if symmetric:
            estimates.setdefault(ia, []).append(base[ib] + f_t)
    out = base.copy()
    for i, ests in estimates.items():
        out[i] = normalize(alpha * base[i] + (1.0 - alpha) * np.mean(ests, axis=0))
    return out


def compare_probability(score: np.ndarray | float, temperature: float = 0.1, bias: float = 0.0) -> np.ndarray:
    """Logistic map of a compare score to P(T holds): sigmoid((score - bias) / temperature).

    The default temperature is a placeholder; calibrated values (fitted by logistic regression on
    held-out pairs) travel with a model and override it.
    """
    z = (np.asarray(score, dtype=np.float64) - bias) / max(float(temperature), _EPS)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def composed_query(reference: np.ndarray, modifiers: np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Difference arithmetic: "like `reference`, but with more of T_1 (w_1 > 0), less of T_2 (w_2 < 0)...".

    q = n( n(g(ref)) + sum_i w_i n(f(T_i)) )      reference [D], modifiers [M, D], weights [M] -> q [D]

    Derivation. PC-CLIP trains the text embedding of T, a text saying how image I1 differs from
    image I2, towards the normalised difference of the normalised image embeddings:

        f(T) ~ d(I1, I2) = n( n(g(I1)) - n(g(I2)) ).

    Write c = ||n(g(I1)) - n(g(I2))|| (> 0 for different images). Multiplying by c and moving
    n(g(I2)) over:

        n(g(I1)) = n(g(I2)) + c * d(I1, I2) ~ n(g(I2)) + c * f(T).

    So the embedding of "an image like I2, but T" is reached by adding f(T) to the reference with
    a weight playing the part of c (how far to move), and it is compared by cosine, so its length
    does not matter and we normalise. Several modifiers add up (each is a step along its own
    difference direction); a negative weight steps along -f(T) ~ d(I2, I1), i.e. "less of T". The
    identity is exact when f(T) is the true difference direction and w = c: then q = n(g(I1)).
    The reference can be a text embedding as well (same joint space). With no modifiers q = n(ref).
    """
    ref = normalize(np.asarray(reference, dtype=np.float32).reshape(-1))
    mods = np.asarray(modifiers, dtype=np.float32).reshape(-1, ref.shape[0]) if np.size(modifiers) else np.zeros((0, ref.shape[0]), np.float32)
    w = np.asarray(weights, dtype=np.float32).reshape(-1)
    if len(w) != len(mods):
        raise ValueError(f"{len(mods)} modifiers but {len(w)} weights")
    return normalize(ref + (w[:, None] * normalize(mods)).sum(axis=0))
