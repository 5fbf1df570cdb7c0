"""The forward pass of the served model on each backend, side by side in one run.

    .venv/bin/python -m benchmarks.forward --out artifacts/bench/forward.json

Per backend (handai.backends.candidates: torch fp32/bf16, OpenVINO f32/bf16): median ms over
60 runs at batch 1, 9 (one TTA read) and 32, with the thread count the Model replica uses.
Then the plan the service picks here, and whether its answers agree with fp32 torch on MNIST
test and hwd1000 (through the real preprocessing): argmax agreement, accuracy and ECE.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handai import registry
from handai.backends import Forward, TorchForward, candidates, plan
from handai.config import load_settings
from handai.inference import Engine
from handai.preprocess import preprocess
from train.evaluate import hwd1000, mnist_test
from train.temperature import ece

SIZES = (1, 9, 32)
RUNS = 60
TTA_SAMPLE = 2000  # MNIST images also read with TTA (nine views each): the slow part


def median_ms(fn: Callable[[], object], runs: int = RUNS) -> float:
    fn()
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def latency(forward: Forward) -> dict[str, float]:
    out = {}
    for size in SIZES:
        batch = torch.randn(size, 1, 28, 28, generator=torch.Generator().manual_seed(size))
        out[str(size)] = median_ms(functools.partial(forward, batch))
    return out


def throughput(forward: Forward, size: int, seconds: float = 3.0) -> float:
    batch = torch.randn(size, 1, 28, 28)
    forward(batch)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        forward(batch)
        runs += 1
    return round(runs * size / (time.perf_counter() - start), 1)


def readings(engine: Engine, pixels: np.ndarray, tta: bool) -> torch.Tensor:
    """Calibrated probabilities, in batches of 64 as a busy replica forms them."""
    chunks = [
        engine.probabilities(torch.from_numpy(pixels[i : i + 64]), [tta] * len(pixels[i : i + 64]))
        for i in range(0, len(pixels), 64)
    ]
    return torch.cat(chunks)


def agreement(
    served: Engine, reference: Engine, sets: dict[str, tuple[np.ndarray, np.ndarray]]
) -> list[dict[str, Any]]:
    rows = []
    for name, (pixels, labels) in sets.items():
        for tta in (False, True):
            sample = slice(None) if not tta or len(pixels) <= TTA_SAMPLE else slice(TTA_SAMPLE)
            x, y = pixels[sample], torch.from_numpy(labels[sample])
            ref, got = readings(reference, x, tta), readings(served, x, tta)
            rows.append(
                {
                    "set": name,
                    "tta": tta,
                    "images": len(x),
                    "agree_pct": round(
                        100 * float((ref.argmax(1) == got.argmax(1)).float().mean()), 3
                    ),
                    "acc_fp32_pct": round(100 * float((ref.argmax(1) == y).float().mean()), 3),
                    "acc_served_pct": round(100 * float((got.argmax(1) == y).float().mean()), 3),
                    "ece_fp32_pct": round(100 * ece(ref, y), 3),
                    "ece_served_pct": round(100 * ece(got, y), 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/forward.json"))
    args = parser.parse_args()
    settings = load_settings()
    threads = settings.app.threads
    if threads:
        torch.set_num_threads(threads)
    loaded = registry.load(
        registry.SEED_DIR, registry.list_manifests(registry.SEED_DIR)[0].model_id
    )
    forwards = candidates(loaded.module, loaded.sha256, "auto", threads)
    backends = {}
    for name, forward in forwards.items():
        backends[name] = {**latency(forward), "img_s_at_32": throughput(forward, 32)}
        print(name, json.dumps(backends[name]), flush=True)
    served = plan(loaded.module, loaded.sha256, loaded.manifest.arch, settings.app.backend, threads)
    print("served:", served.name, flush=True)
    chosen = {
        "name": served.name,
        **latency(served),
        "img_s_at_32": throughput(served, 32),
        "img_s_at_64": throughput(served, 64),
    }
    sets = {}
    for name, (blobs, labels) in {
        "mnist_test": mnist_test(args.data),
        "hwd1000": hwd1000(args.data),
    }.items():
        sets[name] = (np.concatenate([preprocess(b).pixels for b in blobs]), np.asarray(labels))
    temperature = loaded.manifest.temperature
    rows = agreement(
        Engine(served, temperature, 0.85),
        Engine(TorchForward(loaded.module), temperature, 0.85),
        sets,
    )
    result = {
        "model_id": loaded.manifest.model_id,
        "threads": torch.get_num_threads(),
        "runs": RUNS,
        "backends": backends,
        "served": chosen,
        "agreement": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
