"""The attribute-direction loss: a linear attribute probe on image embeddings, and the direction in
embedding space of each fact a difference text states.

The paper's PC-CLIP loss aligns a text with the pair differences of the photos it was written for;
learned from a few classes' pairs, each text's direction also picks up those classes' identities.
This module gives every fact ("the first bird is larger", "red vs black crown") a direction fitted
across all training photos at once: a ridge regression from normalised image embeddings to the
class attribute rows. `1 - cos(f(T), direction(fact of T))` is the extra loss term
(`training.losses.attribute_direction_loss`), used by `pcclip reproduce` and `pcclip train --probe-weight`.
"""

from __future__ import annotations

import numpy as np


def fact_key(d) -> tuple:
    """What a difference states, whatever its phrasing: (kind, attributes, direction, other attribute)."""
    return (d.kind, tuple(d.attributes), int(d.direction), d.other_attribute)


def fact_from_source(source: dict) -> tuple | None:
    """`fact_key` of a pair record's provenance (`Difference.source()`); None when the record does
    not come from the attribute writer."""
    try:
        return (source["kind"], tuple(source["attributes"]), int(source["direction"]), source.get("other_attribute"))
    except (KeyError, TypeError, ValueError):
        return None


def attribute_targets(table, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """The regression targets of each class: every table column (percent), then the ordinal size
    and bill-length scores (x 100; a class without them gets the middle of the scale)."""
    from training.data import size_score
    from training.pairs.attributes import BILL_LENGTH_ORDER

    columns = sorted(table.row(classes[0]).keys())
    out = []
    for c in classes:
        r = table.row(c)
        bill = np.array([r[x] for x in BILL_LENGTH_ORDER], dtype=np.float64)
        bill_score = float((bill * np.arange(1, 4)).sum() / bill.sum()) if bill.sum() > 0 else 2.0
        size = size_score(table, c)
        out.append([r[x] for x in columns] + [100 * (size if size == size else 3.0), 100 * bill_score])
    return columns + ["size", "bill length"], np.nan_to_num(np.array(out, dtype=np.float64))


def table_targets(table, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """The regression targets of each class for a table without ordinal scores (AwA2): every
    column's strength, a missing value as 0."""
    columns = sorted(table.row(classes[0]).keys())
    rows = [[table.row(c)[x] for x in columns] for c in classes]
    return columns, np.nan_to_num(np.array(rows, dtype=np.float64))


class AttributeProbe:
    """Linear attribute probe on image embeddings, and the direction in embedding space of each fact.

    A ridge regression from normalised image embeddings of seen-class training photos to their
    class's attribute row (every table column, plus the ordinal size and bill-length scores) gives
    one weight vector per attribute. The direction of a fact is the weight vector of its measure
    (the difference of two vectors for "X vs Y" claims), signed by the claim's direction, so
    `direction . (g(I1) - g(I2)) > 0` is the probe's prediction that the fact holds for (I1, I2).
    """

    def __init__(self, table, embeddings: np.ndarray, classes: list[str], ridge: float = 1.0,
                 targets=attribute_targets):
        from sklearn.linear_model import Ridge

        self.columns, rows = targets(table, sorted(set(classes)))
        index = {c: i for i, c in enumerate(sorted(set(classes)))}
        fit = Ridge(alpha=ridge).fit(embeddings, rows[[index[c] for c in classes]])
        self.weights = fit.coef_  # [columns, D]
        self.index = {c: i for i, c in enumerate(self.columns)}

    def direction(self, fact: tuple) -> np.ndarray:
        """Unit vector of a fact (see `fact_key`) in image-embedding space."""
        kind, attributes, sign, other = fact
        w, i = self.weights, self.index
        if kind == "size" and "size" not in i:  # a table without a size score (AwA2: big vs small)
            v = sign * (w[i[attributes[0]]] - w[i[attributes[1]]])
        elif kind == "size":
            v = sign * w[i["size"]]
        elif kind == "bill length":
            v = sign * w[i["bill length"]]
        elif other is not None:
            v = w[i[attributes[0]]] - w[i[other]]
        else:
            v = sign * w[i[attributes[0]]]
        return v / max(np.linalg.norm(v), 1e-12)

    def directions(self, facts: list[tuple]) -> np.ndarray:
        """`direction` of each fact [len(facts), D] (float32), each distinct fact computed once."""
        unique = {f: self.direction(f) for f in dict.fromkeys(facts)}
        return np.stack([unique[f] for f in facts]).astype(np.float32)
