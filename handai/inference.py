"""Batched inference: TTA views, one forward pass, temperature-scaled probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray

from handai.backends import Forward
from handai.prediction import N_VIEWS, ROTATIONS, SHIFTS, TOP_K, Prediction
from handai.preprocess import BACKGROUND


def _view_thetas(side: int = 28) -> torch.Tensor:
    """Affine matrices (output -> input sampling) for the nine TTA views."""
    thetas = []
    for dx, dy in SHIFTS:
        # Content moves by (dx, dy) pixels: sample from the opposite side.
        thetas.append([[1.0, 0.0, -2.0 * dx / side], [0.0, 1.0, -2.0 * dy / side]])
    for degrees in ROTATIONS:
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        thetas.append([[c, -s, 0.0], [s, c, 0.0]])
    return torch.tensor(thetas, dtype=torch.float32)


_THETAS = _view_thetas()


def tta_views(batch: torch.Tensor) -> torch.Tensor:
    """(N,1,28,28) -> (N*9,1,28,28); pixels shifted in from outside are background, not wrapped."""
    n = batch.shape[0]
    shifted = (batch - BACKGROUND).repeat_interleave(N_VIEWS, dim=0)
    grid = F.affine_grid(_THETAS.repeat(n, 1, 1), list(shifted.shape), align_corners=False)
    views = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return views + BACKGROUND


class Engine:
    """Runs a loaded model; not thread-safe, one batch at a time per engine."""

    def __init__(self, forward: Forward, temperature: float, uncertain_threshold: float) -> None:
        self.forward = forward
        self.temperature = temperature
        self.uncertain_threshold = uncertain_threshold

    def probabilities(self, pixels: torch.Tensor, tta: Sequence[bool]) -> torch.Tensor:
        """(N,1,28,28) -> (N, n_classes) calibrated probabilities, TTA views averaged."""
        flags = torch.tensor(list(tta), dtype=torch.bool)
        expanded = tta_views(pixels[flags]) if bool(flags.any()) else pixels[:0]
        batch = torch.cat([pixels[~flags], expanded])
        logits = self.forward(batch)
        probs = torch.softmax(logits / self.temperature, dim=1)
        plain, views = probs[: int((~flags).sum())], probs[int((~flags).sum()) :]
        out = torch.empty(pixels.shape[0], probs.shape[1])
        out[~flags] = plain
        if views.shape[0]:
            out[flags] = views.reshape(-1, N_VIEWS, probs.shape[1]).mean(dim=1)
        return out

    def predict(
        self,
        pixels: NDArray[np.float32],
        tta: Sequence[bool],
        priors: Sequence[Sequence[float] | None] = (),
    ) -> list[Prediction]:
        """With `priors` (one per image, or none at all), each image's probabilities are
        multiplied by its prior, where it has one, and normalized again."""
        if len(tta) != pixels.shape[0]:
            raise ValueError(f"expected one tta flag per image, got {len(tta)} for {len(pixels)}")
        if priors and len(priors) != pixels.shape[0]:
            raise ValueError(f"expected one prior per image, got {len(priors)} for {len(pixels)}")
        probs = self.probabilities(torch.from_numpy(pixels).reshape(-1, 1, 28, 28), tta)
        for i, prior in enumerate(priors):
            if prior is not None:
                weighed = probs[i] * torch.tensor(prior, dtype=probs.dtype)
                probs[i] = weighed / weighed.sum()
        return [self._prediction(row) for row in probs.tolist()]

    def _prediction(self, probs: list[float]) -> Prediction:
        order = sorted(range(len(probs)), key=lambda i: probs[i], reverse=True)
        digit = order[0]
        return Prediction(
            digit=digit,
            confidence=probs[digit],
            probs=probs,
            top_k=[(i, probs[i]) for i in order[:TOP_K]],
            uncertain=probs[digit] < self.uncertain_threshold,
        )
