"""Training augmentation on preprocessed 1x28x28 ink tensors in [0, 1] (1 = ink, 0 = paper)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import BaseModel, ConfigDict, Field
from torchvision.transforms import v2

Transform = Callable[[torch.Tensor], torch.Tensor]


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


class SaltPepper:
    def __init__(self, prob: float) -> None:
        self.prob = prob

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hit = torch.rand_like(x) < self.prob
        return torch.where(hit, (torch.rand_like(x) < 0.5).to(x.dtype), x)


class Dots:
    def __init__(self, prob: float) -> None:
        self.prob = prob

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.prob:
            return x
        x = x.clone()
        side = x.shape[-1]
        for _ in range(int(torch.randint(1, 4, ()))):
            y0, x0 = (int(v) for v in torch.randint(0, side - 1, (2,)))
            x[..., y0 : y0 + 2, x0 : x0 + 2] = 1.0
        return x


class Morph:
    """Erode or dilate with a 3x3 window: pen widths vary more than MNIST's."""

    def __init__(self, prob: float) -> None:
        self.prob = prob

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.prob:
            return x
        if torch.rand(()) < 0.5:
            return F.max_pool2d(x[None], 3, stride=1, padding=1)[0]
        return -F.max_pool2d(-x[None], 3, stride=1, padding=1)[0]


class Breaks:
    """Gaps where the pen skipped or a ruled line was removed across a stroke."""

    def __init__(self, prob: float) -> None:
        self.prob = prob

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.prob:
            return x
        ink = (x[0] > 0.5).nonzero()
        if len(ink) == 0:
            return x
        x = x.clone()
        for _ in range(int(torch.randint(1, 4, ()))):
            y0, x0 = (int(v) for v in ink[int(torch.randint(0, len(ink), ()))])
            x[..., max(y0 - 1, 0) : y0 + 1, max(x0 - 1, 0) : x0 + 1] = 0.0
        return x


class Grain:
    """Pencil: ink dimmed unevenly, pixel by pixel."""

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= 0.5:
            return x
        return x * (1.0 - self.strength * torch.rand_like(x))


def build_augment(cfg: AugmentConfig) -> Transform | None:
    steps: list[Transform] = []
    if cfg.aug_rotate or cfg.aug_translate or cfg.scale:
        steps.append(
            v2.RandomAffine(
                degrees=cfg.aug_rotate,
                translate=(cfg.aug_translate, cfg.aug_translate) if cfg.aug_translate else None,
                scale=(1 - cfg.scale, 1 + cfg.scale) if cfg.scale else None,
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=0.0,
            )
        )
    if cfg.perspective:
        steps.append(v2.RandomPerspective(cfg.perspective, p=0.5, fill=0.0))
    if cfg.elastic:
        elastic = v2.ElasticTransform(alpha=cfg.elastic, sigma=4.0, fill=0.0)
        steps.append(v2.RandomApply([elastic], p=0.5))
    if cfg.morph:
        steps.append(Morph(cfg.morph))
    if cfg.breaks:
        steps.append(Breaks(cfg.breaks))
    if cfg.texture:
        steps.append(Grain(cfg.texture))
    if cfg.blur_sigma:
        blur = v2.GaussianBlur(kernel_size=5, sigma=(0.1, cfg.blur_sigma))
        steps.append(v2.RandomApply([blur], p=0.5))
    if cfg.dots_prob:
        steps.append(Dots(cfg.dots_prob))
    if cfg.noise_prob:
        steps.append(SaltPepper(cfg.noise_prob))
    return v2.Compose(steps) if steps else None
