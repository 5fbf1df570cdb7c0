"""The memory layout a training step runs fastest in on this machine, chosen by measurement.

On the Intel Xeon with AMX (2 cores, bf16 autocast, batch 128) channels_last trained 16 %
faster (198 against 171 images/s) and inferred faster at every batch size; on another machine
channels_last was once measured many times slower. So each run times both on its own
hardware (about 3 s) instead of trusting either.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812

from handai.model import build_model

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
PROBE_BATCH = 64  # enough images for the kernels a full batch gets; a probe stays ~1 s a layout
TIMED_STEPS = 2


def _step_seconds(
    layout: torch.memory_format, device: torch.device, bf16: bool, batch: int
) -> float:
    """The best of TIMED_STEPS forward and backward passes of a fresh ResNet-18 (one warm-up
    first: oneDNN builds its kernels on the first call)."""
    model = build_model().to(device).to(memory_format=layout).train()
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    best = float("inf")
    for step in range(TIMED_STEPS + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step > 0:
            best = min(best, time.perf_counter() - start)
    return best


def fastest_layout(device: torch.device, bf16: bool, batch_size: int) -> str:
    """The name (a key of LAYOUTS) of the faster layout. Every worker of a DDP run takes the
    first worker's choice: DDP reduces gradients as flat buffers in each parameter's own
    layout, so workers that chose differently would add up mismatched elements."""
    batch = min(batch_size, PROBE_BATCH)
    # On forked random state: a run's shuffles and augmentations stay what its seed makes them.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        times = {name: _step_seconds(fmt, device, bf16, batch) for name, fmt in LAYOUTS.items()}
    choice = [min(times, key=times.__getitem__)]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    return str(choice[0])
