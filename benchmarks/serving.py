"""Serving figures: the Ray Serve graph against the single-process baseline, same machine.

    make serve &   # or any started service
    .venv/bin/python -m benchmarks.serving --out artifacts/bench/serving.json

For each upload (28x28 PNG, 1024x1024 JPEG), TTA off and on, and each concurrency: p50/p95/
p99 latency and requests/s over real HTTP; for the graph also where a read's time went (from
the service's own Prometheus metrics, see deployments/metrics.py) and the batch sizes formed.
Then the baseline (benchmarks.baseline) under the same load, twice: with the graph's own
forward pass (what the targets compare: the graph against one process), and on plain torch
as the service Handai replaced served (app.backend = "torch"); and the bare forward pass's
throughput as the ceiling. Prints and writes JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from benchmarks.images import UPLOADS
from benchmarks.load import run_load
from handai import registry
from handai.backends import plan
from handai.config import load_settings
from handai.inference import Engine

Snapshot = dict[str, float]
STAGES = ("handler", "queue", "graph", "preprocess", "forward")


def metrics_url() -> str:
    """The local Ray node's Prometheus export (Serve and handai metrics)."""
    import ray

    ray.init(address="auto", logging_level=logging.ERROR, log_to_driver=False)
    try:
        port = ray.nodes()[0]["MetricsExportPort"]
    finally:
        ray.shutdown()
    return f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> Snapshot:
    """Sums over replicas of the handai series a stage breakdown needs."""
    out: Snapshot = defaultdict(float)
    for line in httpx.get(url, timeout=10).text.splitlines():
        if not line.startswith("ray_handai_") or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        tags = dict(part.split("=", 1) for part in labels.rstrip("}").split(",") if "=" in part)
        key = name
        if "stage" in tags:
            key += ":" + tags["stage"].strip('"')
        if name.endswith("_bucket"):
            key += ":le=" + tags["le"].strip('"')
        out[key] += float(value)
    return out


def settled(url: str, before: Snapshot, reads: int, timeout: float = 60.0) -> Snapshot:
    """Ray pushes each process's metrics every few seconds: wait until every stage has
    counted all `reads` (each process's other series arrive with its stage counts)."""
    deadline = time.monotonic() + timeout
    while True:
        now = scrape(url)
        counted = min(
            now.get(f"ray_handai_read_stage_ms_count:{stage}", 0)
            - before.get(f"ray_handai_read_stage_ms_count:{stage}", 0)
            for stage in STAGES
        )
        if counted >= reads or time.monotonic() > deadline:
            return now
        time.sleep(2)


def breakdown(before: Snapshot, after: Snapshot, client_mean_ms: float) -> dict[str, Any]:
    """Mean ms per read in each stage; `client_mean_ms` covers the same reads (warm-up too)."""

    def mean(stage: str) -> float:
        count = after[f"ray_handai_read_stage_ms_count:{stage}"] - before.get(
            f"ray_handai_read_stage_ms_count:{stage}", 0
        )
        total = after[f"ray_handai_read_stage_ms_sum:{stage}"] - before.get(
            f"ray_handai_read_stage_ms_sum:{stage}", 0
        )
        return total / count if count else float("nan")

    m = {stage: mean(stage) for stage in STAGES}
    stages = {
        "http_proxy_and_client": client_mean_ms - m["handler"],
        "ingress_route": m["handler"] - m["queue"] - m["graph"],
        "ingress_batching_wait": m["queue"],
        "preprocess": m["preprocess"],
        "forward_pass": m["forward"],
        "hops_and_model_queue": m["graph"] - m["preprocess"] - m["forward"],
    }
    return {
        "mean_ms": {k: round(v, 2) for k, v in stages.items()},
        "share": {k: round(v / client_mean_ms, 3) for k, v in stages.items()},
        "ingress_batch": histogram_mean(before, after, "ray_handai_ingress_batch_size"),
        "forward_batch": histogram_mean(before, after, "ray_handai_batch_size"),
    }


def histogram_mean(before: Snapshot, after: Snapshot, name: str) -> dict[str, float]:
    """Mean and largest bucket of a batch-size histogram over the run (bucket bounds)."""
    buckets = sorted(
        (float(k.rsplit("le=", 1)[1]), after[k] - before.get(k, 0))
        for k in after
        if k.startswith(name + "_bucket") and not k.endswith("+Inf")
    )
    prev, lower, biggest, total, n = 0.0, 0.0, 0.0, 0.0, 0.0
    for bound, cumulative in buckets:
        in_bucket = cumulative - prev
        if in_bucket > 0:
            biggest = bound
            total += in_bucket * (lower + bound) / 2 if lower else in_bucket * bound
            n += in_bucket
        prev, lower = cumulative, bound
    return {"batches": n, "mean_size": round(total / n, 1) if n else 0.0, "max_bucket": biggest}


def run_matrix(
    base_url: str, clients: list[int], seconds: float, metrics: str | None
) -> list[dict[str, Any]]:
    rows = []
    for image, (label, ctype, make) in UPLOADS.items():
        data = make()
        for tta in (False, True):
            url = f"{base_url}/v1/read?tta={'true' if tta else 'false'}"
            for c in clients:
                before = scrape(metrics) if metrics else {}
                result = run_load(url, data, ctype, c, seconds)
                reads = result.requests + result.warmup_requests
                row: dict[str, Any] = {"image": image, "label": label, "tta": tta}
                row |= result.as_dict()
                if metrics:
                    after = settled(metrics, before, reads)
                    row["stages"] = breakdown(before, after, result.mean_ms_all)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def forward_ceiling(batch_sizes: list[int], threads: int) -> dict[str, float]:
    """Images/s of the bare forward pass (Engine.predict, TTA off) in this process."""
    torch.set_num_threads(threads)
    settings = load_settings()
    model_dir = settings.storage.models
    loaded = registry.load(model_dir, registry.resolve_active(model_dir))
    forward = plan(
        loaded.module, loaded.sha256, loaded.manifest.arch, settings.app.backend, threads
    )
    engine = Engine(forward, loaded.manifest.temperature, 0.85)
    out = {}
    for size in batch_sizes:
        pixels = np.random.default_rng(0).normal(size=(size, 1, 28, 28)).astype(np.float32)
        engine.predict(pixels, [False] * size)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < 3.0:
            engine.predict(pixels, [False] * size)
            runs += 1
        out[str(size)] = round(runs * size / (time.perf_counter() - start), 1)
    return out


def start_baseline(port: int, backend: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.baseline", "--port", str(port)],
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            # A plain server has the machine to itself: its forward pass is fastest on every
            # core (2 threads here: 32 clients 307-314 reads/s, 1 thread 196), while the
            # graph's Model shares them with two other stages (app.threads = 1).
            "APP__THREADS": str(os.cpu_count() or 1),
            "APP__BACKEND": backend,
        },
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("the baseline did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8081")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baseline-port", type=int, default=8091)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/serving.json"))
    args = parser.parse_args()

    metrics = metrics_url()
    graph = run_matrix(args.url, args.clients, args.seconds, metrics)
    baselines = {}
    for name, backend in (("baseline", "auto"), ("baseline_torch", "torch")):
        proc = start_baseline(args.baseline_port, backend)
        try:
            baselines[name] = run_matrix(
                f"http://127.0.0.1:{args.baseline_port}", args.clients, args.seconds, None
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    top = max(args.clients)
    sizes = sorted(
        {1, 8, 32}
        | {
            max(1, round(r["stages"]["forward_batch"]["mean_size"]))
            for r in graph
            if r["concurrency"] == top and not r["tta"]
        }
    )
    threads = load_settings().app.threads or 1  # the Model replica's: num_cpus 1 -> 1 thread
    ceiling = forward_ceiling(sizes, threads)
    print("forward ceiling (img/s by batch size):", ceiling)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "graph": graph,
                **baselines,
                "forward_ceiling_img_s": ceiling,
                "forward_threads": threads,
                "clients": args.clients,
                "seconds": args.seconds,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
