"""What a job's `augment` asks for, and its presets (the transforms are in train.augment).

Apart from the transforms, which need torch: the Ingress validates job bodies with these.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class AugmentConfig(BaseModel):
    """Each option at 0 switches its transform off."""

    model_config = ConfigDict(extra="forbid")

    aug_rotate: Annotated[float, Field(ge=0, le=45)] = 0.0  # degrees, either way
    aug_translate: Annotated[float, Field(ge=0, le=0.3)] = 0.0  # fraction of the side
    scale: Annotated[float, Field(ge=0, le=0.5)] = 0.0  # zoom in [1 - scale, 1 + scale]
    noise_prob: Annotated[float, Field(ge=0, le=0.2)] = 0.0  # per-pixel salt and pepper
    dots_prob: Annotated[float, Field(ge=0, le=1)] = 0.0  # chance of 1-3 stray dots
    blur_sigma: Annotated[float, Field(ge=0, le=3)] = 0.0  # max Gaussian sigma, half the time
    morph: Annotated[float, Field(ge=0, le=1)] = 0.0  # chance of thinner or thicker strokes
    elastic: Annotated[float, Field(ge=0, le=100)] = 0.0  # ElasticTransform alpha (pixels^2)
    perspective: Annotated[float, Field(ge=0, le=0.5)] = 0.0  # keystone, half the time
    breaks: Annotated[float, Field(ge=0, le=1)] = 0.0  # chance of 1-3 gaps in the strokes
    texture: Annotated[float, Field(ge=0, le=0.8)] = 0.0  # pencil grain: ink dimmed by up to this


# `augment: true` in a job: the settings the shipped model was trained with.
DEFAULT = AugmentConfig(aug_rotate=10, aug_translate=0.08, scale=0.1, morph=0.25)
# `augment: wild`: what preprocessing makes of phone photos and pencil (train/wild.py renders
# them): pen widths, hand wobble, keystone, blur, gaps and grain.
WILD = AugmentConfig(
    aug_rotate=12,
    aug_translate=0.08,
    scale=0.12,
    morph=0.4,
    blur_sigma=0.9,
    elastic=30.0,
    perspective=0.2,
    breaks=0.25,
    texture=0.5,
    dots_prob=0.05,
)
NONE = AugmentConfig()
