"""Item text templates for the item tower, screened without training (issue #15): the pure text kNN peer
(encoders.evaluate.text_knn_scores) over the pretrained embeddings of the same catalog records written in
each template, on the VALIDATION cases only.

A template is a function of the catalog record the worker gets (title with its year, categories); the
default is `core.features.item_text`. If a template does not move the text model's own neighbours, it has
little to give the trained model either, whose text pathway starts from the same sentence vectors. Cold
figures are the mean ± std over several withheld sets (`withhold_items(split, 0.1, seed)`): about 100 cold
cases per set, so one set is noisy. HR@10 and NDCG@10 with the user's history excluded (as the worker does).

    .venv/bin/python -m bench.item_templates [--text-model NAME_OR_DIR] [--cold-seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.datasets import load_interactions, read_records, split_leave_one_out
from core.features import FeatureSpec, item_text
from encoders.evaluate import evaluate_text_knn, pretrained_item_vectors, withhold_items

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"


def _genres(record: dict) -> str:
    return ", ".join(record.get("categories") or [])


# name -> catalog record -> text; the titles carry their year ("Toy Story (1995)")
TEMPLATES: dict[str, Callable[[dict], str]] = {
    "default: {title}. {genres}": lambda r: item_text(r["title"], r.get("description"), r.get("categories")),
    "title only": lambda r: r["title"],
    "Movie: {title}. Genres: {genres}.": lambda r: f"Movie: {r['title']}. Genres: {_genres(r)}.",
    "A {genres} movie: {title}": lambda r: f"A {_genres(r).lower() or 'feature'} movie: {r['title']}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--text-model", default="", help="a TEXT_MODELS name or a local HF dir (default MiniLM)")
    parser.add_argument("--cold-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()

    data = load_interactions(args.data, FeatureSpec())
    _, records = read_records(args.data)
    by_id = {str(r["item_id"]): r for r in records}
    split = split_leave_one_out(data)
    print(f"Text kNN on the validation cases ({args.text_model or 'all-MiniLM-L6-v2'}), history excluded; cold: mean")
    print(f"± std over withheld sets {args.cold_seeds}.\n")
    print("| template | NDCG@10 | HR@10 | cold HR@10 | cold NDCG@10 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, template in TEMPLATES.items():
        texts = [template(by_id[i]) if i in by_id else i for i in data.item_ids]
        vectors = pretrained_item_vectors(texts, args.text_model)
        warm = evaluate_text_knn(split, vectors, "valid").product
        cold = [evaluate_text_knn(withhold_items(split, 0.1, s), vectors, "valid") for s in args.cold_seeds]
        hr = np.array([c.cold_product_hr10 for c in cold])
        ndcg = np.array([c.cold_product_ndcg10 for c in cold])
        print(
            f"| {name} | {warm['NDCG@10']:.4f} | {warm['HR@10']:.4f} | {hr.mean():.4f} ± {hr.std(ddof=1):.4f} "
            f"| {ndcg.mean():.4f} ± {ndcg.std(ddof=1):.4f} |"
        )
    print(f"\n`python -m bench.item_templates {shlex.join(sys.argv[1:])}`")


if __name__ == "__main__":
    main()
