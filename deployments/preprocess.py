"""The Preprocess deployment: bytes in, the model's 28x28 input out (see handai.preprocess).

Called once per ingress batch: a bad image answers with its own error in its slot, so one
unreadable upload never fails the others sharing its batch.

The image work runs on two threads of the replica's own: Serve runs a sync method on an
anyio worker thread and starts new ones as idle ones retire, and that churn grew this
replica's memory by ~0.5 KB a read (11.6 % in a 30-minute soak) and cost ~15 % of the
graph's throughput. Measured side by side: flat memory and the throughput back.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.serve.metrics import Histogram

from deployments.metrics import stage_histogram
from handai.config import load_settings
from handai.errors import HandaiError
from handai.numbers import Slot, segment
from handai.preprocess import Prepared, preprocess

# One per core: the Ingress keeps two batches in flight (max_batches_in_flight).
WORKERS = 2


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
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="preprocess")

    async def __call__(self, uploads: list[bytes], invert: list[bool | None]) -> list[Prepared]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._batch, uploads, invert)

    async def segment(self, upload: bytes, invert: bool | None) -> list[Slot]:
        """A whole number: every digit's candidate inputs (see handai.numbers)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._segment, upload, invert)

    def _batch(self, uploads: list[bytes], invert: list[bool | None]) -> list[Prepared]:
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

    def _segment(self, upload: bytes, invert: bool | None) -> list[Slot]:
        start = time.perf_counter()
        slots = segment(upload, max_side=self.max_side, invert=invert)
        self.stage.observe((time.perf_counter() - start) * 1000, tags={"stage": "segment"})
        return slots
