"""The ranking stage's model: an MLP over the ranking features with two heads, P(click) and P(purchase).

Retrieval narrows the catalog to its best N candidates; the ranker (wide and deep: a linear term over
the features plus the MLP's, per head; with `residual`, added to the retrieval gap) scores each (user, candidate) row
of core/ranking_features.py (retrieval score, text similarity to the window, popularity and trend,
age, category overlap, the user's recency and event-type mix) and a list is ordered by
click_weight x P(click) + purchase_weight x P(purchase) (`blend`). The features are standardised
by the training set's mean and spread, stored with the weights, so the exported graph takes raw
features.

Checkpoint (the `ranker/` directory beside a retrieval checkpoint, nothing pickled):
    ranker.safetensors  weights and the standardisation
    ranker.json         RankerConfig (with its RankingFeatureSpec) and what training measured
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from core.ranking_features import RankingFeatureSpec, blend  # noqa: F401 - blend: the order, re-exported
from encoders.config import RankerConfig  # torch-free

HEADS = ("p_click", "p_purchase")


class Ranker(nn.Module):
    def __init__(self, config: RankerConfig):
        super().__init__()
        self.config = config
        F, H = config.features.n_features, config.hidden
        self.register_buffer("mean", torch.zeros(F))  # [F] of the training features
        self.register_buffer("scale", torch.ones(F))  # [F] their spread (1 where constant)
        layers, width = [], F
        for _ in range(config.n_layers):
            layers += [nn.Linear(width, H), nn.ReLU(), nn.Dropout(config.dropout)]
            width = H
        self.body = nn.Sequential(*layers)
        self.heads = nn.Linear(width, len(HEADS))
        self.wide = nn.Linear(F, len(HEADS))  # a linear term beside the MLP: the retrieval score's share from step 1
        # residual: the logits are the retrieval gap (<= 0, the user's best candidate at 0, so no sigmoid saturates)
        # plus what the layers add, zero at the start, so training starts from the retrieval order
        self.gap_column = config.features.names.index("retrieval_gap") if config.residual else None
        if config.residual:
            for layer in (self.heads, self.wide):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def fit_standardisation(self, features: np.ndarray) -> None:
        """features [..., F]: the rows the model is trained on."""
        rows = torch.from_numpy(features.reshape(-1, features.shape[-1]))
        self.mean.copy_(rows.mean(0))
        self.scale.copy_(rows.std(0).clamp(min=1e-6))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., F] raw -> [..., 2] logits of (click, purchase)."""
        x = (features - self.mean) / self.scale  # [..., F]
        correction = self.heads(self.body(x)) + self.wide(x)  # [..., 2]
        if self.gap_column is None:
            return correction
        return features[..., self.gap_column, None] + correction

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., F] -> [..., 2] probabilities (P(click), P(purchase)): what ranker.onnx serves."""
        return torch.sigmoid(self.logits(features))


def save_ranker(model: Ranker, out_dir: str | Path, metrics: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "ranker.safetensors"))
    (out / "ranker.json").write_text(json.dumps({"config": asdict(model.config), "metrics": metrics}, indent=2))
    return out


def load_ranker(ranker_dir: str | Path) -> Ranker:
    root = Path(ranker_dir)
    raw = json.loads((root / "ranker.json").read_text())["config"]
    config = replace(RankerConfig(**raw), features=RankingFeatureSpec.from_dict(raw["features"]))
    model = Ranker(config)
    model.load_state_dict(load_file(str(root / "ranker.safetensors")))
    return model.eval()
