"""Where COCO val2017 zero-shot goes wrong for the shipped pcclip-mini and its base (issue 13).

For each model: the share right (top label among the photo's annotated categories, as in
`training.evaluate_everyday.coco_top1`), the labels it wrongly puts first, how many wrong photos
have a person annotated, and the rank of "person" among the 80 names on the photos with and
without a person. Usage: everyday_coco_errors.py [DATA_ROOT]."""
import collections, sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from training.data import default_data_dir
from training.evaluate import embed_model
from training.evaluate_everyday import build_everyday_setup, class_embeddings
from training.features import default_cache_dir

root = Path(sys.argv[1]) if len(sys.argv) > 1 else default_data_dir()
s = build_everyday_setup(root)
with_person = np.array(["person" in c for c in s.coco_categories])
print(f"{len(s.coco_paths)} COCO val2017 photos, {with_person.sum()} with a person annotated")
for name, spec in (("base", "pcclip-mini:base"), ("pcclip", "pcclip-mini")):
    m = embed_model(name, spec, s.coco_paths, root, default_cache_dir())
    logits = m.image_matrix(s.coco_paths) @ class_embeddings(m, s.coco_names).T
    top = [s.coco_names[i] for i in logits.argmax(1)]
    right = np.array([t in c for t, c in zip(top, s.coco_categories)])
    person = logits[:, s.coco_names.index("person")]
    rank = (logits > person[:, None]).sum(1)
    print(f"{name}: right {right.mean():.1%}; wrong {int((~right).sum())}, of them with a person {int((~right & with_person).sum())}; "
          f"'person' first on {int((rank == 0).sum())} photos")
    print(f"  wrong first labels: {collections.Counter(t for t, r in zip(top, right) if not r).most_common(8)}")
    print(f"  rank of 'person' (0 = first): median {np.median(rank[with_person]):.0f} on photos with a person, "
          f"{np.median(rank[~with_person]):.0f} without")
