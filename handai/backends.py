"""Forward passes: the same model run by plain torch or by OpenVINO, picked by measurement.

Each candidate (torch fp32, torch bf16 autocast, OpenVINO f32, OpenVINO bf16 where the CPU has
BF16, OpenVINO int8 where the model's int8 copy passed its check) is timed per batch size on
this machine, and each batch runs on the fastest measured at the nearest size below it. The
choice is remembered per machine, and the OpenVINO conversion per model (keyed by its weights'
sha256), so a restarted replica starts in about a second. Plain torch is the fallback where
OpenVINO is missing or refuses the model, and on GPUs.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from handai import int8, openvino_ir
from handai.config import Backend
from handai.openvino_forward import OpenVINOForward

PRECISION_SIZES = (1, 4, 16, 64)
CACHE = Path(tempfile.gettempdir()) / "handai-cache"
log = logging.getLogger(__name__)


class Forward(Protocol):
    """(N,1,28,28) float32 -> (N, n_classes) float32 logits."""

    @property
    def name(self) -> str: ...

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchForward:
    """Plain torch on the module's own device: batches in and logits out on the CPU."""

    def __init__(self, module: nn.Module, bf16: bool = False) -> None:
        self.module = module.eval()
        self.bf16 = bf16
        self.device = next(module.parameters()).device
        suffix = "" if self.device.type == "cpu" else f"-{self.device.type}"
        self.name = f"torch-{'bf16' if bf16 else 'fp32'}{suffix}"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            out: torch.Tensor = self.module(batch.to(self.device, non_blocking=True))
            return out.float().cpu()


@dataclass(frozen=True)
class Planned:
    """Runs each batch on the forward measured fastest at the nearest size at or below it."""

    by_size: Mapping[int, Forward]

    @property
    def name(self) -> str:
        return ", ".join(f"{size}+: {fwd.name}" for size, fwd in sorted(self.by_size.items()))

    def pick(self, batch_size: int) -> Forward:
        sizes = sorted(self.by_size)
        chosen = [s for s in sizes if s <= batch_size] or sizes[:1]
        return self.by_size[chosen[-1]]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.pick(batch.shape[0])(batch)


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo; "" where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == field:
                return value.strip()
    return ""


def cpu_name() -> str:
    """The CPU's model name, for people: reports and benchmarks."""
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def cpu_key() -> str:
    """The CPU's name and a digest of its feature flags, for caches of what was measured fast:
    virtual machines name different CPUs alike ("AMD EPYC" with and without AVX-512 BF16),
    and the flags decide the kernels."""
    return f"{cpu_name()} {hashlib.sha256(_cpuinfo('flags').encode()).hexdigest()[:8]}"


def _openvino() -> Any:
    """The openvino module, or None where it is not installed."""
    try:
        import openvino  # optional: torch serves without it
    except ImportError:
        return None
    return openvino


def openvino_forwards(module: nn.Module, sha256: str, threads: int) -> dict[str, Forward]:
    """OpenVINO f32, bf16 where the CPU has it, and int8 where the model's int8 copy passed its
    check (handai.int8) for this model; {} where OpenVINO can't run it."""
    ov = _openvino()
    if ov is None:
        return {}
    try:
        core = ov.Core()
        models = _converted(ov, core, module, sha256)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        precisions = ["f32"]
        if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            precisions.append("bf16")
        found: dict[str, Forward] = {}
        for precision in precisions:
            compiled = core.compile_model(
                models["f32"], "CPU", {**config, "INFERENCE_PRECISION_HINT": precision}
            )
            forward = OpenVINOForward(compiled, precision)
            found[forward.name] = forward
        if "int8" in models:
            compiled = core.compile_model(models["int8"], "CPU", {**config, **int8.COMPILE})
            found["openvino-int8"] = OpenVINOForward(compiled, "int8")
        return found
    except Exception as exc:  # an unsupported op or CPU: torch still serves
        log.warning("OpenVINO unavailable for this model, serving with torch: %s", exc)
        return {}


def _converted(ov: Any, core: Any, module: nn.Module, sha256: str) -> dict[str, Any]:
    """The model in OpenVINO's IR ("f32"), and its int8 copy where it has one ("int8"),
    converted once per weights (in a process of its own, so a serving replica keeps answering
    meanwhile) and kept in the cache."""
    # "-q": folders from before int8 copies were made are converted again, once.
    folder = CACHE / "openvino" / f"{sha256[:32]}-{ov.__version__.split('-')[0]}-q"
    for _ in range(2):
        with one_at_a_time(folder.with_name(f"{folder.name}.lock")):
            if not (folder / openvino_ir.XML).is_file():
                try:
                    openvino_ir.convert_apart(module, folder)
                except (OSError, RuntimeError) as exc:  # a read-only /tmp, say: convert here
                    log.warning("converting in a process of its own failed (%s)", exc)
                    return {"f32": openvino_ir.convert(module)}
        try:
            models = {"f32": core.read_model(folder / openvino_ir.XML)}
            if (folder / openvino_ir.INT8_XML).is_file():
                models["int8"] = core.read_model(folder / openvino_ir.INT8_XML)
            return models
        except Exception:  # a torn or stale file: convert again
            log.warning("converted model in %s unreadable; converting again", folder)
            shutil.rmtree(folder, ignore_errors=True)
    return {"f32": openvino_ir.convert(module)}


@contextlib.contextmanager
def one_at_a_time(lock: Path) -> Iterator[None]:
    """Replicas starting together convert and time once: the first works, the others wait
    for it and then read its result from the cache."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = lock.open("a")
    except OSError:  # a read-only cache: each replica does its own work
        yield
        return
    with handle:  # closing it releases the lock, also when the holder dies
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def native_bf16(device: torch.device) -> bool:
    """Whether the hardware does bf16 itself (AMX/AVX512-BF16 CPUs, Ampere+ GPUs)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def candidates(
    module: nn.Module, sha256: str, backend: Backend, threads: int
) -> dict[str, Forward]:
    on_gpu = torch.cuda.is_available()
    if on_gpu:  # plain torch on a copy on the GPU: the caller's module stays on the CPU
        module = copy.deepcopy(module).to("cuda")
    # Emulated bf16 is many times slower than fp32: timing it cost minutes of a first start.
    kinds = (False, True) if native_bf16(torch.device("cuda" if on_gpu else "cpu")) else (False,)
    torch_ones: dict[str, Forward] = {
        f.name: f for f in (TorchForward(module, bf16=bf16) for bf16 in kinds)
    }
    if backend == "torch" or on_gpu:
        return torch_ones
    found = openvino_forwards(module, sha256, threads)
    if backend == "openvino" and found:
        return found
    return {**torch_ones, **found}


def fastest(forwards: Mapping[str, Forward], sizes: Sequence[int]) -> dict[int, str]:
    """Per batch size, the name of the forward with the least time over three warm runs."""
    chosen: dict[int, str] = {}
    for size in sizes:
        batch = torch.randn(size, 1, 28, 28)
        timings: dict[str, float] = {}
        for name, forward in forwards.items():
            try:
                forward(batch)  # warm up kernels for this shape
                start = time.perf_counter()
                for _ in range(3):
                    forward(batch)
                timings[name] = time.perf_counter() - start
            except RuntimeError:  # bf16 kernels missing on this CPU
                timings[name] = math.inf
        chosen[size] = min(timings, key=lambda name: timings[name])
    return chosen


def plan(
    module: nn.Module,
    sha256: str,
    arch: str,
    backend: Backend = "auto",
    threads: int = 0,
    sizes: Sequence[int] = PRECISION_SIZES,
) -> Planned:
    """The forwards to serve with, the choice remembered per machine. Keyed by what decides
    it: the CPU, the libraries and thread count, the architecture and the backend asked for."""
    forwards = candidates(module, sha256, backend, threads)
    ov = _openvino()
    key = "|".join(
        str(part)
        for part in (
            cpu_key(),
            torch.__version__,
            ov.__version__ if ov is not None else "no-openvino",
            torch.get_num_threads(),
            threads,
            arch,
            backend,
            sorted(forwards),
            tuple(sizes),
        )
    )
    path = CACHE / f"plan-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    with one_at_a_time(path.with_suffix(".lock")):  # and undisturbed by the others' timing
        chosen = _read_choice(path, forwards)
        if chosen is None:
            chosen = fastest(forwards, sizes)
            _write_choice(path, chosen)
    return Planned({size: forwards[name] for size, name in chosen.items()})


def _read_choice(path: Path, forwards: Mapping[str, Forward]) -> dict[int, str] | None:
    try:
        chosen = {int(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return None
    return chosen if chosen and all(name in forwards for name in chosen.values()) else None


def _write_choice(path: Path, chosen: dict[int, str]) -> None:
    with contextlib.suppress(OSError):  # a cache only: a read-only /tmp costs the timing runs
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(chosen))
        tmp.replace(path)
