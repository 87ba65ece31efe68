"""A model version's config.json, typed and versioned: one model written by both exporters (the
trained two-tower model, `export.pipeline`; the zero-training baseline, `export.baseline`) and read
by the registry, the worker's runtime and `models list`.

    schema_version 1   written by this code: every field the exporters know is present
    no schema_version  written before the field existed ("version 0"): the same keys, read as they
                       are, a missing one taking its default (`feature_spec`: FeatureSpec())
    newer than 1       refused with a ConfigError: this reader does not know what changed

Extra keys are kept (and written back): a tool may annotate a version.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError, model_validator

from core.errors import ConfigError
from core.features import FeatureSpec

CONFIG_FILE = "config.json"
SCHEMA_VERSION = 1  # what this code writes and the newest it reads
Kind = Literal["baseline", "two_tower"]  # baseline: item tower only; two_tower: item + user towers


def _feature_spec(value: Any) -> FeatureSpec:
    if isinstance(value, FeatureSpec):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"must be an object, got {type(value).__name__}")
    return FeatureSpec.from_dict(value)


FeatureSpecField = Annotated[FeatureSpec, PlainValidator(_feature_spec), PlainSerializer(FeatureSpec.to_dict)]


class ModelConfig(BaseModel):
    """config.json of a registered model version (see the module docstring)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: int = SCHEMA_VERSION
    kind: Kind
    dim: int = Field(gt=0)  # width of item and user vectors
    max_tokens: int | None = Field(default=None, gt=0)  # tokens per item text (item tower input)
    normalized: bool | None = None  # unit-length item vectors (baseline: score = cosine) or not (dot product)
    feature_spec: FeatureSpecField = FeatureSpec()  # how windows become user-tower inputs
    item_tower: dict[str, Any] = Field(default_factory=dict)  # the item tower's training config
    user_tower: dict[str, Any] | None = None  # the user tower's training config (two_tower only)
    id_residual: bool | None = None  # trained items carry a learned ID vector (two_tower only)
    text_model: str | None = None  # the pretrained language model (baseline)
    opset: int | None = None  # ONNX opset of item.onnx / user.onnx
    source_checkpoint: str | None = None  # the training checkpoint exported (two_tower)
    created_with: dict[str, str] = Field(default_factory=dict)  # library versions at export
    # The ranking stage (ranker.onnx), optional: {"features": RankingFeatureSpec.to_dict(), "heads": [...],
    # "n_candidates": N trained on}. None: the version serves the retrieval order.
    ranker: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> ModelConfig:
        """From version 1 on, what every exporter writes must be there."""
        if self.schema_version >= 1:
            required = ["max_tokens", "normalized", "feature_spec", "item_tower", "opset"]
            if self.kind == "two_tower":
                required += ["user_tower", "id_residual"]
            missing = [name for name in required if name not in self.model_fields_set]
            if missing:
                raise ValueError(f"schema_version {self.schema_version} requires {missing}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """A parsed config.json (any schema version this code reads); ConfigError saying what is wrong."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{CONFIG_FILE} must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigError(f"{CONFIG_FILE}: schema_version must be a non-negative integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{CONFIG_FILE} has schema_version {version}, newer than this streamrec reads (up to "
                f"{SCHEMA_VERSION}): the version was exported by a newer release. Upgrade streamrec here, or "
                f"serve a version exported by this release (`streamrec rollback`)"
            )
        try:
            return cls.model_validate({**data, "schema_version": version})
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
            raise ConfigError(
                f"{CONFIG_FILE} (schema_version {version}) is invalid: {problems}; re-export the version"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object to write as config.json (fields that are None are left out)."""
        return self.model_dump(mode="json", exclude_none=True)
