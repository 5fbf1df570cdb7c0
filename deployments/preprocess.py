"""The Preprocess deployment: bytes in, the model's 28x28 input out (see handai.preprocess).

Called once per ingress batch: a bad image answers with its own error in its slot, so one
unreadable upload never fails the others sharing its batch.
"""

from __future__ import annotations

import time

from ray import serve
from ray.serve.metrics import Histogram

from deployments.metrics import stage_histogram
from handai.config import load_settings
from handai.errors import HandaiError
from handai.numbers import Slot, segment
from handai.preprocess import Prepared, preprocess


@serve.deployment
class Preprocess:
    def __init__(self) -> None:
        self.max_side = load_settings().digits.max_image_side_px
        self.hist = Histogram(
            "handai_preprocess_ms",
            description="Decode-to-tensor time per image (ms).",
            boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100],
        )

        self.stage = stage_histogram()

    def __call__(self, uploads: list[bytes], invert: list[bool | None]) -> list[Prepared]:
        began = time.perf_counter()
        out: list[Prepared] = []
        for data, flag in zip(uploads, invert, strict=True):
            start = time.perf_counter()
            try:
                out.append(preprocess(data, max_side=self.max_side, invert=flag))
            except HandaiError as exc:
                out.append(exc)
            self.hist.observe((time.perf_counter() - start) * 1000)
        batch_ms = (time.perf_counter() - began) * 1000
        for _ in uploads:  # every read in the batch waited for all of it
            self.stage.observe(batch_ms, tags={"stage": "preprocess"})
        return out

    def segment(self, upload: bytes, invert: bool | None) -> list[Slot]:
        """A whole number: every digit's candidate inputs (see handai.numbers)."""
        start = time.perf_counter()
        slots = segment(upload, max_side=self.max_side, invert=invert)
        self.stage.observe((time.perf_counter() - start) * 1000, tags={"stage": "segment"})
        return slots
