"""Builders shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def ml100k_catalog(n_items: int, spec) -> tuple[list[str], list[str]]:
    """The first `n_items` ml-100k items as (ids, item texts)."""
    from core.datasets import load_interactions

    data = load_interactions(ML100K, spec)
    return data.item_ids[:n_items], data.item_texts[:n_items]


def small_two_tower_checkpoint(out: Path, n_items: int = 60, max_len: int = 12) -> Path:
    """An untrained but complete two-tower checkpoint (MiniLM + 16-wide projection, 1-layer
    user tower) over the first ml-100k items, with a trained-looking ID residual on half."""
    import torch

    from core.features import FeatureSpec
    from encoders.item_tower import ItemTowerConfig
    from encoders.recommender import Recommender, RecommenderConfig, save_checkpoint
    from encoders.user_tower import UserTowerConfig

    spec = FeatureSpec(max_len=max_len)
    torch.manual_seed(0)
    ids, texts = ml100k_catalog(n_items, spec)
    config = RecommenderConfig(
        n_items=len(ids),
        item_tower=ItemTowerConfig(proj_dim=16, max_tokens=24),
        user_tower=UserTowerConfig(
            dim=16,
            n_layers=1,
            n_heads=2,
            max_len=spec.max_len,
            n_event_ids=spec.n_event_ids,
            n_time_buckets=spec.n_time_buckets,
        ),
    )
    model = Recommender(config, spec).eval()
    model.encode_catalog(texts)
    with torch.no_grad():
        model.warm[: len(ids) // 2] = True
        if model.id_emb is not None:
            model.id_emb.weight.normal_(0, 0.05)
    save_checkpoint(model, ids, texts, out, {"NDCG@10": 0.05, "curves": {"loss": [1.0]}})
    return out


def small_ranked_checkpoint(out: Path) -> Path:
    """`small_two_tower_checkpoint` with an untrained ranker beside it (standardised on noise), as
    `streamrec train --ranker` saves one."""
    import numpy as np
    import torch

    from encoders.config import RankerConfig
    from encoders.ranker import Ranker, save_ranker

    checkpoint = small_two_tower_checkpoint(out)
    torch.manual_seed(0)
    ranker = Ranker(RankerConfig())
    ranker.fit_standardisation(np.random.default_rng(0).normal(size=(50, ranker.config.features.n_features)))
    save_ranker(ranker, checkpoint / "ranker", {})
    return checkpoint


def ml100k_subset(out: Path, n_users: int) -> Path:
    """ml-100k's first `n_users` users' interactions and the items they touched, as RecBole atomic files."""
    out.mkdir(parents=True, exist_ok=True)
    header, *rows = (ML100K / "ml-100k.inter").read_text().splitlines()
    kept = [row for row in rows if int(row.split("\t")[0]) <= n_users]
    items = {row.split("\t")[1] for row in kept}
    (out / "ml-100k.inter").write_text("\n".join([header, *kept]) + "\n")
    item_header, *item_rows = (ML100K / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    item_rows = [row for row in item_rows if row.split("\t")[0] in items]
    (out / "ml-100k.item").write_text("\n".join([item_header, *item_rows]) + "\n", encoding="utf-8")
    return out
