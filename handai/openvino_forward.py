"""An OpenVINO compiled model as a forward pass: torch batches in, torch logits out.

Apart from handai.backends so that handai.int8's check runs the int8 copy exactly as serving
does (backends imports int8: the class there would be a cycle).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import openvino


class OpenVINOForward:
    """An infer request per thread, reused: a request runs one batch at a time, and callers
    (a server's thread pool, asyncio.to_thread) may call from several threads at once."""

    def __init__(self, compiled: openvino.CompiledModel, precision: str) -> None:
        self.compiled = compiled
        self.local = threading.local()
        self.name = f"openvino-{precision}"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        request.infer({0: batch.contiguous().numpy()})
        # Copied: the request's output buffer is overwritten by the next batch.
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
