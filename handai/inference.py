"""Batched inference: TTA views, one forward pass, temperature-scaled probabilities."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from torch import nn

from handai.preprocess import BACKGROUND

# Identity, four one-pixel shifts (dx, dy), four small rotations (degrees).
SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
ROTATIONS = (-6.0, -3.0, 3.0, 6.0)
N_VIEWS = len(SHIFTS) + len(ROTATIONS)
TOP_K = 3
PRECISION_SIZES = (1, 4, 16, 64)
CACHE = Path(tempfile.gettempdir()) / "handai-cache"


@dataclass(frozen=True)
class Prediction:
    digit: int
    confidence: float
    probs: list[float]
    top_k: list[tuple[int, float]]
    uncertain: bool


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


def bf16_faster(module: nn.Module, sizes: Sequence[int] = PRECISION_SIZES) -> dict[int, bool]:
    """Time fp32 against bf16 autocast per batch size on this CPU (AMX makes bf16 win at scale)."""
    faster: dict[int, bool] = {}
    for size in sizes:
        batch = torch.randn(size, 1, 28, 28)
        timings = {}
        for bf16 in (False, True):
            try:
                _forward(module, batch, bf16)  # warm up kernels for this shape
                start = time.perf_counter()
                for _ in range(3):
                    _forward(module, batch, bf16)
                timings[bf16] = time.perf_counter() - start
            except RuntimeError:
                timings[bf16] = math.inf
        faster[size] = timings[True] < timings[False]
    return faster


def cached_bf16_faster(module: nn.Module, arch: str) -> dict[int, bool]:
    """`bf16_faster`, remembered per machine: a restarted replica (a crash, a redeploy) skips
    the seconds of timing runs. Keyed by what decides the answer: the CPU, torch and its
    thread count, and the architecture."""
    key = f"{cpu_name()}|{torch.__version__}|{torch.get_num_threads()}|{arch}|{PRECISION_SIZES}"
    path = CACHE / f"precision-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        return {int(k): bool(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        pass
    found = bf16_faster(module)
    with contextlib.suppress(OSError):  # a cache only: a read-only /tmp costs the timing runs
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(found))
        tmp.replace(path)
    return found


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), what decides which kernels are fast."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _forward(module: nn.Module, batch: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out: torch.Tensor = module(batch).float()
        return out


class Engine:
    """Runs a loaded model; not thread-safe, one batch at a time per engine."""

    def __init__(
        self,
        module: nn.Module,
        temperature: float,
        uncertain_threshold: float,
        bf16_by_size: dict[int, bool] | None = None,
    ) -> None:
        self.module = module.eval()
        self.temperature = temperature
        self.uncertain_threshold = uncertain_threshold
        self.bf16_by_size = bf16_by_size if bf16_by_size is not None else {1: False}

    def use_bf16(self, batch_size: int) -> bool:
        measured = [s for s in sorted(self.bf16_by_size) if s <= batch_size] or [
            min(self.bf16_by_size)
        ]
        return self.bf16_by_size[measured[-1]]

    def probabilities(self, pixels: torch.Tensor, tta: Sequence[bool]) -> torch.Tensor:
        """(N,1,28,28) -> (N, n_classes) calibrated probabilities, TTA views averaged."""
        flags = torch.tensor(list(tta), dtype=torch.bool)
        expanded = tta_views(pixels[flags]) if bool(flags.any()) else pixels[:0]
        batch = torch.cat([pixels[~flags], expanded])
        logits = _forward(self.module, batch, self.use_bf16(batch.shape[0]))
        probs = torch.softmax(logits / self.temperature, dim=1)
        plain, views = probs[: int((~flags).sum())], probs[int((~flags).sum()) :]
        out = torch.empty(pixels.shape[0], probs.shape[1])
        out[~flags] = plain
        if views.shape[0]:
            out[flags] = views.reshape(-1, N_VIEWS, probs.shape[1]).mean(dim=1)
        return out

    def predict(self, pixels: NDArray[np.float32], tta: Sequence[bool]) -> list[Prediction]:
        if len(tta) != pixels.shape[0]:
            raise ValueError(f"expected one tta flag per image, got {len(tta)} for {len(pixels)}")
        probs = self.probabilities(torch.from_numpy(pixels).reshape(-1, 1, 28, 28), tta)
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
