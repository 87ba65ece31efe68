"""The two-tower recommender: item tower (+ optional ID residual) and user tower.

An item's vector is its projected text embedding plus, optionally, a learned
per-item residual that is nonzero only for items seen in training ("warm"), so
unseen items keep a text-only vector in the same space. The user tower reads the
vectors of the window's items; score(user, item) = user_vector . item_vector
+ beta[e] * 1[item in window], where e is the event type of the user's latest event
on that item in the window (the repeat term, in the spirit of RepeatNet: Ren et al.,
"RepeatNet: A Repeat Aware Neural Recommendation Machine for Session-based
Recommendation", AAAI 2019). beta is learned with the next-item loss, so the model
learns from data how likely a user is to come back to an item it already has; the
served ONNX user tower leaves it out because the worker excludes the history anyway
(beta = -inf).

With `use_text=False` the item vector is the ID embedding alone: the ID-only
baseline that shows what the language model adds.

Checkpoint directory (nothing pickled):
    model.safetensors  weights (the frozen LM is not stored; it is reloaded from text_model_dir)
    config.json        {"recommender": RecommenderConfig, "features": FeatureSpec}
    items.json         {"item_ids": [...], "item_texts": [...]} in catalog order
    metrics.json       whatever the trainer measured
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from core.errors import DataError
from core.features import FeatureSpec
from encoders.config import ItemTowerConfig, RecommenderConfig, UserTowerConfig  # torch-free
from encoders.item_tower import ItemTower
from encoders.user_tower import UserTower

# What a checkpoint saved before these ItemTowerConfig fields existed was trained and served with.
LEGACY_ITEM_TOWER = {"text_mlp": 0, "cold_scale": 1.0}


class Recommender(nn.Module):
    def __init__(self, config: RecommenderConfig, feature_spec: FeatureSpec):
        super().__init__()
        self.config = config
        self.feature_spec = feature_spec
        N, D = config.n_items, config.user_tower.dim
        self.item_tower = ItemTower(config.item_tower) if config.use_text else None
        self.user_tower = UserTower(config.user_tower)
        if self.item_tower is not None:
            self.register_buffer("text_emb", torch.zeros(N, self.item_tower.lm.config.hidden_size))  # [N, H] LM cache
        self.id_emb = nn.Embedding(N, D) if config.id_residual or not config.use_text else None
        if self.id_emb is not None and config.use_text:
            nn.init.zeros_(self.id_emb.weight)  # a residual starts at zero
        elif self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.02)
        self.register_buffer("warm", torch.zeros(N, dtype=torch.bool))  # items that had training interactions
        n_events = config.user_tower.n_event_ids
        self.repeat = nn.Parameter(torch.zeros(n_events)) if config.repeat_bias else None  # [E] beta per event type

    def encode_catalog(self, item_texts: list[str]) -> None:
        """Fill the sentence-embedding cache from the item texts (catalog order)."""
        if self.item_tower is not None:
            self.text_emb.copy_(self.item_tower.encode_texts(item_texts))

    def item_vectors(self, sentence: torch.Tensor | None = None) -> torch.Tensor:
        """Catalog item vectors [N, D] from sentence embeddings [N, H] (default: the cache)."""
        text, residual = self.item_parts(sentence)
        return text if residual is None else text + residual

    def item_parts(
        self, sentence: torch.Tensor | None = None, residual_dropout: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(text vectors [N, D], ID residuals [N, D] or None): the item vector is their sum. An item never
        trained on has no residual and its text vector is `ItemTower.new_item_vectors`, what item.onnx serves
        for a new item; in training, a random `residual_dropout` share (default: the config's) of the warm
        items also goes without its residual. ID-only: the ID embedding is the "text" part."""
        if self.item_tower is None:
            return self.id_emb.weight * self.warm.unsqueeze(-1), None
        sentence = self.text_emb if sentence is None else sentence
        text = self.item_tower.project(sentence)  # [N, D]
        if not self.warm.all():
            text = torch.where(self.warm.unsqueeze(-1), text, self.item_tower.new_item_vectors(sentence))
        if self.id_emb is None:
            return text, None
        rate = self.config.residual_dropout if residual_dropout is None else residual_dropout
        residual = self.warm
        if self.training and rate > 0:  # these items must score well by their text alone
            residual = residual & (torch.rand(len(residual), device=residual.device) >= rate)
        return text, self.id_emb.weight * residual.unsqueeze(-1)

    def alignment_loss(self, text: torch.Tensor) -> torch.Tensor:
        """Pulls warm items' text vectors [N, D] towards their full vectors (text + ID residual, held fixed):
        the text projection learns to put an item where its trained vector is, which is where an item without
        a trained vector should land. -> [].

        "mse": mean squared distance to the item's own full vector. "infonce" (contrastive, as in CLIP:
        Radford et al., 2021): each warm item's text vector must pick its own full vector out of all warm
        items' by cosine / temperature, so only directions are aligned and the norms stay the ranking
        loss's to set."""
        if self.id_emb is None or not self.warm.any():
            return text.new_zeros(())
        warm_text = text[self.warm]  # [W, D]
        full = (warm_text + self.id_emb.weight[self.warm]).detach()  # [W, D]
        if self.config.align_loss == "mse":
            return ((warm_text - full) ** 2).sum(-1).mean()
        logits = F.normalize(warm_text, dim=-1) @ F.normalize(full, dim=-1).T / self.config.align_temperature
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))  # [W, W], own item

    def catalog_vectors(self) -> torch.Tensor:
        """What the worker scores against: [N, D] in the checkpoint's item order."""
        return self.item_vectors()

    def user_states(
        self,
        catalog: torch.Tensor,
        items: torch.Tensor,
        event_types: torch.Tensor,
        time_buckets: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Windows of item indices -> hidden state at every position.

        catalog [N, D], items / event_types / time_buckets [B, T] long, attention_mask [B, T] bool
        (left-padded; item index at padding is ignored) -> [B, T, D].
        """
        vectors = catalog[items] * attention_mask.unsqueeze(-1)  # [B, T, D]
        return self.user_tower.sequence(vectors, event_types, time_buckets, attention_mask)

    def repeat_scores(
        self, items: torch.Tensor, event_types: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The repeat term at every position: beta[event type of the latest event on item i at or
        before position t], 0 for items not in that causal prefix (or without a repeat term).

        items / event_types [B, T] long, attention_mask [B, T] bool (left-padded) -> [B, T, N].
        """
        B, T = items.shape  # batch, time
        if self.repeat is None:
            return torch.zeros(B, T, self.config.n_items, device=items.device)
        step = torch.arange(T, device=items.device)  # [T]
        t = step.view(1, T, 1)  # query position
        next_same = _next_same(items, attention_mask)  # [B, T]
        live = (
            attention_mask.unsqueeze(1) & (step <= t) & (t < next_same.unsqueeze(1))
        )  # [B, T, T]: event s is the latest on its item at t
        beta = self.repeat[event_types].unsqueeze(1) * live  # [B, T, T]
        return torch.zeros(B, T, self.config.n_items, device=items.device).scatter_add_(
            2, items.unsqueeze(1).expand(B, T, T), beta
        )  # [B, T, N], at most one live event per item

    def last_repeat_scores(
        self, items: torch.Tensor, event_types: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """`repeat_scores(...)[:, -1]`, the term scoring a whole window needs, without the [B, T, N]
        tensor: -> [B, N]."""
        B, T = items.shape
        if self.repeat is None:
            return torch.zeros(B, self.config.n_items, device=items.device)
        latest = attention_mask & (_next_same(items, attention_mask) == T)  # [B, T]: no later event on the item
        return torch.zeros(B, self.config.n_items, device=items.device).scatter_add_(
            1, items, self.repeat[event_types] * latest
        )


def _next_same(items: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, T]: the next position holding the same item (T if none), padding ignored."""
    T = items.size(1)
    step = torch.arange(T, device=items.device)
    later_same = (items.unsqueeze(2) == items.unsqueeze(1)) & attention_mask.unsqueeze(1) & (step > step.unsqueeze(1))
    return torch.where(later_same, step, T).amin(dim=2)


def transplant(source: Recommender, source_ids: list[str], item_ids: list[str], item_texts: list[str]) -> Recommender:
    """`source`'s weights over another catalog (a warm start for retraining, or the production
    model scored on today's items): ID residuals and warm flags follow the item ids, items
    the source never saw start text-only; the repeat term (beta per event type, shared by all
    items) is carried over as is."""
    model = Recommender(replace(source.config, n_items=len(item_ids)), source.feature_spec)
    per_item = ("text_emb", "warm", "id_emb.weight")
    model.load_state_dict({k: v for k, v in source.state_dict().items() if k not in per_item}, strict=False)
    model.encode_catalog(item_texts)
    old_row = {item_id: row for row, item_id in enumerate(source_ids)}
    pairs = [(new, old_row[i]) for new, i in enumerate(item_ids) if i in old_row]
    if pairs:
        new_rows, old_rows = (torch.tensor(rows) for rows in zip(*pairs))
        with torch.no_grad():
            model.warm[new_rows] = source.warm[old_rows]
            if model.id_emb is not None:
                model.id_emb.weight[new_rows] = source.id_emb.weight[old_rows]
    return model


def _stored_keys(model: Recommender) -> list[str]:
    """Every tensor except a frozen LM's weights (those come from text_model_dir)."""
    frozen_lm = model.item_tower is not None and model.config.item_tower.train_top_layers == 0
    return [k for k in model.state_dict() if not (frozen_lm and k.startswith("item_tower.lm."))]


def save_checkpoint(
    model: Recommender, item_ids: list[str], item_texts: list[str], out_dir: str | Path, metrics: dict
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_file({k: state[k].detach().contiguous() for k in _stored_keys(model)}, str(out / "model.safetensors"))
    config = {"recommender": asdict(model.config), "features": model.feature_spec.to_dict()}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "items.json").write_text(json.dumps({"item_ids": item_ids, "item_texts": item_texts}))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def load_checkpoint(ckpt_dir: str | Path) -> tuple[Recommender, list[str], list[str]]:
    """-> (model in eval mode, item_ids, item_texts); needs nothing but the directory (and the LM)."""
    root = Path(ckpt_dir)
    raw = json.loads((root / "config.json").read_text())
    rc = raw["recommender"]
    config = RecommenderConfig(
        n_items=rc["n_items"],
        item_tower=ItemTowerConfig(**{**LEGACY_ITEM_TOWER, **rc["item_tower"]}),
        user_tower=UserTowerConfig(**rc["user_tower"]),
        use_text=rc["use_text"],
        id_residual=rc["id_residual"],
        repeat_bias=rc.get("repeat_bias", False),  # checkpoints from before the repeat term have none
        residual_dropout=rc.get("residual_dropout", 0.0),
        align_weight=rc.get("align_weight", 0.0),
        align_loss=rc.get("align_loss", "mse"),
        align_temperature=rc.get("align_temperature", 0.1),
        text_loss_weight=rc.get("text_loss_weight", 0.0),
    )
    spec = FeatureSpec.from_dict(raw["features"])
    model = Recommender(config, spec)
    state = load_file(str(root / "model.safetensors"))
    expected = set(_stored_keys(model))
    if set(state) != expected:
        raise DataError(
            f"{root}: weights do not match config.json (missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]}): the checkpoint is incomplete or mixed; "
            f"save it again (or restore it from its registry version)"
        )
    model.load_state_dict(state, strict=False)
    items = json.loads((root / "items.json").read_text())
    return model.eval(), items["item_ids"], items["item_texts"]
