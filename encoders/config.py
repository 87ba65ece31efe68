"""The trainer's configurations, torch-free: the model's (item tower, user tower, recommender), a
training run's (TrainConfig) and a retrain run's (RetrainConfig). The command-line options of
`streamrec train` and `streamrec retrain` take their defaults from these, so a default is written
once, here. The torch modules re-export them (encoders.train.TrainConfig, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.features import FeatureSpec
from core.ranking_features import RankingFeatureSpec
from core.settings import DEFAULT_RANKER_CANDIDATES, DEFAULT_RANKER_CLICK_WEIGHT, DEFAULT_RANKER_PURCHASE_WEIGHT

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"  # the item tower's text model unless told otherwise


@dataclass
class ItemTowerConfig:
    text_model_dir: str = ""  # a name in encoders.item_tower.TEXT_MODELS or any local HF encoder dir; "" = default
    proj_dim: int | None = 64  # output width; None = raw normalised sentence embedding
    max_tokens: int = 32  # item titles are short; longer text is truncated
    train_top_layers: int = 0  # 0 = frozen LM; n = fine-tune the top n transformer layers
    pooling: str = ""  # "mean" or "cls" (first token); "" = what the model dir's sentence-transformers config says
    text_mlp: int = 256  # hidden width of a residual MLP beside the linear projection (0 = linear projection only)
    cold_scale: float = 1.1  # an item without a trained vector is scored by this times its text vector (calibration)


@dataclass
class UserTowerConfig:
    dim: int = 64  # width of item vectors, hidden states and the user vector
    n_layers: int = 2  # transformer blocks
    n_heads: int = 2  # attention heads per block
    max_len: int = 50  # longest window (size of the position table)
    n_event_ids: int = 5  # FeatureSpec.n_event_ids (padding + types + "other")
    n_time_buckets: int = 16  # FeatureSpec.n_time_buckets
    dropout: float = 0.3  # on embeddings, attention weights and residual branches


@dataclass
class RecommenderConfig:
    item_tower: ItemTowerConfig = field(default_factory=ItemTowerConfig)
    user_tower: UserTowerConfig = field(default_factory=UserTowerConfig)
    use_text: bool = True  # False = ID-only baseline (no language model)
    id_residual: bool = True  # learned per-item residual for warm items (text mode)
    residual_dropout: float = 0.2  # training: share of warm items scored text-only in a step (cold-item recall)
    align_weight: float = 0.0  # training: weight of the loss pulling warm items' text vectors onto their full vectors
    align_loss: str = "mse"  # that loss: "mse" (squared distance) or "infonce" (contrastive, cosine / temperature)
    align_temperature: float = 0.1  # "infonce": softmax temperature of the cosine similarities
    text_loss_weight: float = 0.0  # training: weight of a second next-item loss scored by text vectors alone
    repeat_bias: bool = True  # learned beta per event type for items already in the window
    n_items: int = 0  # catalog size N; the trainer sets it from the data


@dataclass
class RankerConfig:
    # model (encoders/ranker.py)
    hidden: int = 64  # width of the MLP's hidden layers
    n_layers: int = 2  # hidden layers
    dropout: float = 0.1
    features: RankingFeatureSpec = field(default_factory=RankingFeatureSpec)
    # what it re-scores and how its heads order a list (the worker's settings have the same defaults)
    n_candidates: int = DEFAULT_RANKER_CANDIDATES  # the retrieval's top N
    click_weight: float = DEFAULT_RANKER_CLICK_WEIGHT  # order = click_weight x P(click)
    purchase_weight: float = DEFAULT_RANKER_PURCHASE_WEIGHT  #       + purchase_weight x P(purchase)
    # training (encoders/ranker_train.py)
    cases_per_user: int = 10  # training cases: each user's newest this many training events as targets (0 = all)
    loss: str = "listwise"  # "listwise": softmax over each case's candidates; "pointwise": BCE per candidate and head
    residual: bool = False  # logits = the retrieval gap + a learned correction starting at 0 (the retrieval order)
    epochs: int = 40  # upper bound; early stopping on validation NDCG@10
    patience: int = 6  # epochs without a better validation NDCG@10
    max_minutes: float = 2.0  # wall-clock budget of the training loop
    lr: float = 3e-3  # AdamW
    weight_decay: float = 1e-4
    batch_size: int = 64  # cases (each with its n_candidates rows) per step
    seed: int = 0


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 300  # upper bound; early stopping usually ends sooner
    batch_size: int = 64  # windows per step
    lr: float = 2e-3  # AdamW, user tower, projection and ID residual
    lm_lr: float = 2e-5  # AdamW for fine-tuned LM layers (train_top_layers > 0)
    repeat_lr: float = 0.05  # AdamW for the repeat term's beta (a few scalars, no weight decay)
    weight_decay: float = 0.01
    patience: int = 20  # epochs without a better validation NDCG@10 before stopping
    max_minutes: float = 10.0  # wall-clock budget for the training loop
    residual_dropout_warmup: int = 0  # epochs over which residual dropout rises linearly to its rate (0 = constant)
    loss: str = "full"  # "full" softmax over the catalog, or "sampled" with logQ correction
    n_negatives: int = 256  # shared negatives per step for the sampled softmax
    cold_items: float = 0.0  # `run`: fraction of the catalog withheld from training (cold-item evaluation)
    cold_seed: int = 0  # which random set of items is withheld (the same seed = the same set for every model)
    threads: int = 2  # torch CPU threads
    device: str = "cpu"  # torch device of the training loop ("cuda" on a GPU machine: bench/gpu.sh)
    features: FeatureSpec = field(default_factory=FeatureSpec)


@dataclass(frozen=True)
class RetrainConfig:
    # data
    since: str | None = None  # duration (7d, 12h): only events written to Kafka in this window
    from_offsets: Path | None = None  # stored position {partition: offset}; a missing file = from the start
    save_offsets: Path | None = None  # where a promoted run stores its end position (default: from_offsets)
    base: Path | None = None  # extra training data (RecBole or JSONL dir) merged before the topic's events
    min_events: int = 100  # fewer valid events -> skipped (exit 4)
    work_root: Path | None = None  # each run writes <work_root>/<UTC stamp>/; None: Settings.trainer.retrain_dir
    # gate
    holdout: str = "10%"  # most recent slice held out: a share of events ("10%", "0.1") or a duration ("1d")
    tolerance: float = 0.005  # promote iff candidate NDCG@10 >= production NDCG@10 - tolerance
    # training (TrainConfig): a fine-tune, so fewer epochs, less patience, a lower rate, a longer budget
    epochs: int = 50  # upper bound; early stopping on leave-one-out validation inside the training data
    patience: int = 10  # epochs without a better validation NDCG@10
    max_minutes: float = 30.0  # wall-clock budget of the training loop
    lr: float = 1e-3  # AdamW; lower than training from scratch because it is a fine-tune
    batch_size: int = TrainConfig.batch_size
    threads: int = TrainConfig.threads  # torch CPU threads
    seed: int = TrainConfig.seed
    # a model from scratch (production has no checkpoint): `streamrec train`'s defaults
    dim: int = UserTowerConfig.dim
    layers: int = UserTowerConfig.n_layers
    heads: int = UserTowerConfig.n_heads
    max_len: int = FeatureSpec.max_len
    progress: bool = True  # tqdm bar while training
    # the ranking stage: None = keep what production has (a ranker iff its version has ranker.onnx)
    ranker: bool | None = None
    ranker_minutes: float = RankerConfig.max_minutes  # wall-clock budget of the ranker's training loop
