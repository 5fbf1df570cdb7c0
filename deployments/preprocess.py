"""The Preprocess deployment: bytes in, the model's 28x28 input out (see handai.preprocess)."""

from __future__ import annotations

import time

from ray import serve
from ray.serve.metrics import Histogram

from handai.config import load_settings
from handai.preprocess import Preprocessed, preprocess


@serve.deployment
class Preprocess:
    def __init__(self) -> None:
        self.max_side = load_settings().digits.max_image_side_px
        self.hist = Histogram(
            "handai_preprocess_ms",
            description="Decode-to-tensor time per image (ms).",
            boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100],
        )

    def __call__(self, data: bytes, invert: bool | None) -> Preprocessed:
        start = time.perf_counter()
        out = preprocess(data, max_side=self.max_side, invert=invert)
        self.hist.observe((time.perf_counter() - start) * 1000)
        return out
