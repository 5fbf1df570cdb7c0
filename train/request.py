"""A training job's parameters: the original `digits.train.v1` body, shared by the
command line (train.job) and the HTTP endpoint (deployments.training)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from handai.manifest import ModelId
from train import augment_config as aug


class JobRequest(BaseModel):
    """The original service's job body (`digits.train.v1`) plus promote, train_limit and
    wild_renders."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["digits.train.v1"] = "digits.train.v1"
    request_id: Annotated[str, Field(max_length=128)] = ""
    # Chat user ids are 64-bit integers; echoed in every event exactly as sent.
    user_id: (
        Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | Annotated[str, Field(max_length=128)]
    ) = ""
    model_id: ModelId
    epochs: Annotated[int, Field(ge=1, le=50)] = 8
    batch_size: Annotated[int, Field(ge=8, le=1024)] = 128
    lr: Annotated[float, Field(gt=0, le=1)] = 0.1
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    augment: aug.AugmentConfig = aug.NONE
    notes: Annotated[str, Field(max_length=2000)] = ""
    promote: bool = False
    train_limit: Annotated[int, Field(ge=100, le=60000)] | None = None
    # Photo-like uploads rendered from the training digits, per style, read as served.
    wild_renders: Annotated[int, Field(ge=0, le=20000)] = 0
    num_workers: Annotated[int, Field(ge=1, le=64)] | None = None

    @field_validator("augment", mode="before")
    @classmethod
    def _augment(cls, value: Any) -> Any:
        return parse_augment(value)


def parse_augment(value: Any) -> Any:
    """true/false, "default"/"wild"/"none", "rotate=10,morph=0.2", or an object of options."""
    if value is True or value in ("default", "true", "on"):
        return aug.DEFAULT
    if value == "wild":
        return aug.WILD
    if value in (False, None, "none", "false", "off", ""):
        return aug.NONE
    if isinstance(value, str):
        pairs = (item.split("=", 1) for item in value.split(",") if item.strip())
        names = {
            "rotate": "aug_rotate",
            "translate": "aug_translate",
            "noise": "noise_prob",
            "dots": "dots_prob",
            "blur": "blur_sigma",
        }
        try:
            return {names.get(k.strip(), k.strip()): float(v) for k, v in pairs}
        except ValueError:
            raise ValueError(f"augment: expected name=number pairs, got {value!r}") from None
    return value
