"""The memory layout a training step runs fastest in on this machine, chosen by measurement.

On the Intel Xeon with AMX (2 cores, bf16 autocast, batch 128) channels_last trained 16 %
faster (198 against 171 images/s) and inferred faster at every batch size; on another machine
channels_last was once measured many times slower. So a machine times both on its own
hardware instead of trusting either: about 3 s on the Xeon, 27 s on an AVX2-only EPYC, so
the choice is kept in the job's cache folder per CPU, torch, device, precision and threads,
and a job (or a restarted worker group) after the first reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812

from handai.backends import cpu_key
from handai.model import build_model
from handai.storage import write_whole

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


def _cache_file(cache_dir: Path, device: torch.device, bf16: bool, batch: int) -> Path:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    key = f"{cpu_key()}|{gpu}|{torch.__version__}|{bf16}|{batch}|{torch.get_num_threads()}"
    return cache_dir / f"layout-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _remembered(path: Path | None) -> str | None:
    if path is None:
        return None
    with contextlib.suppress(OSError, ValueError, TypeError):
        name = json.loads(path.read_text())["layout"]
        if name in LAYOUTS:
            return str(name)
    return None


def _remember(path: Path, name: str) -> None:
    with contextlib.suppress(OSError):  # a cache only: the next run times again
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, json.dumps({"layout": name}).encode())


def fastest_layout(
    device: torch.device, bf16: bool, batch_size: int, cache_dir: Path | None = None
) -> str:
    """The name (a key of LAYOUTS) of the faster layout, timed on the first worker (or read
    from `cache_dir`, where it timed it before). Every worker of a DDP run takes the first
    worker's choice: DDP reduces gradients as flat buffers in each parameter's own layout, so
    workers that chose differently would add up mismatched elements."""
    batch = min(batch_size, PROBE_BATCH)
    distributed = dist.is_available() and dist.is_initialized()
    first = not distributed or dist.get_rank() == 0
    choice: list[str | None] = [None]  # the other workers receive the first one's
    if first:
        path = None if cache_dir is None else _cache_file(cache_dir, device, bf16, batch)
        choice = [_remembered(path)]
        if choice[0] is None:
            # On forked random state: a run's shuffles and augmentations stay what its seed
            # makes them.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                times = {n: _step_seconds(fmt, device, bf16, batch) for n, fmt in LAYOUTS.items()}
            fastest = min(times, key=times.__getitem__)
            if path is not None:
                _remember(path, fastest)
            choice = [fastest]
    if distributed:
        dist.broadcast_object_list(choice, src=0)
    return str(choice[0])
