"""Render docs/benchmarks.md from the JSON the other benchmarks wrote.

.venv/bin/python -m benchmarks.report artifacts/bench docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from handai.inference import cpu_name

STAGE_NAMES = {
    "http_proxy_and_client": "HTTP: client, HAProxy, ingress server",
    "ingress_route": "ingress route (form, response)",
    "ingress_batching_wait": "ingress batching wait",
    "preprocess": "preprocessing (its batch)",
    "forward_pass": "forward pass (its batch)",
    "hops_and_model_queue": "handle calls and Model queue",
}


def machine() -> str:
    cpu = cpu_name()
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}" for p in ("ray", "torch", "fastapi", "uvicorn")
    )
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, no GPU; {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; {versions}"
    )


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def key(row: dict[str, Any]) -> tuple[str, bool, int]:
    return (row["image"], row["tta"], row["concurrency"])


def serving_section(s: dict[str, Any]) -> list[str]:
    base = {key(r): r for r in s["baseline"]}
    lines = [
        "## Serving: the Ray Serve graph against the single-process baseline",
        "",
        f"Closed-loop clients over real HTTP (benchmarks/load.py, aiohttp), {s['seconds']:g} s "
        "per cell after 2 s of warm-up, the client on the same cores as the server. "
        "Baseline: benchmarks/baseline.py (FastAPI + uvicorn, one process, preprocess and "
        "predict per request in the thread pool, same model file). Ratio: graph / baseline "
        "(latency: lower is better; throughput: higher is better).",
        "",
        "| upload | TTA | clients | graph p50 / p95 / p99 ms | graph req/s "
        "| baseline p50 / p95 / p99 ms | baseline req/s | p50 ratio | req/s ratio | failures |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for g in s["graph"]:
        b = base.get(key(g))
        if b is None:
            continue
        lines.append(
            f"| {g['label']} | {'on' if g['tta'] else 'off'} | {g['concurrency']} "
            f"| {g['p50_ms']:.1f} / {g['p95_ms']:.1f} / {g['p99_ms']:.1f} | {g['rps']:.1f} "
            f"| {b['p50_ms']:.1f} / {b['p95_ms']:.1f} / {b['p99_ms']:.1f} | {b['rps']:.1f} "
            f"| {g['p50_ms'] / b['p50_ms']:.2f} | {g['rps'] / b['rps']:.2f} "
            f"| {g['failures']} / {b['failures']} |"
        )
    lines += [
        "",
        "### Where a read's time goes (graph)",
        "",
        "Mean ms per read, from the service's own Prometheus metrics (`handai_read_stage_ms`, "
        "see deployments/metrics.py; Ray exports histogram sums as bucket midpoints, so each "
        "figure is good to about a bucket's half-width), over every read of the cell "
        "(warm-up included). HTTP is the client's mean latency minus the ingress route's "
        "time. Batches: reads per ingress batch (one Preprocess and one Model call) and "
        "images per forward pass, means over the run.",
        "",
        "| upload | TTA | clients | "
        + " | ".join(STAGE_NAMES.values())
        + " | reads per ingress batch | images per forward pass |",
        "|---|---|---:|" + "---:|" * (len(STAGE_NAMES) + 2),
    ]
    for g in s["graph"]:
        st = g.get("stages")
        if not st:
            continue
        cells = " | ".join(f"{st['mean_ms'][k]:.1f} ({st['share'][k]:.0%})" for k in STAGE_NAMES)
        lines.append(
            f"| {g['label']} | {'on' if g['tta'] else 'off'} | {g['concurrency']} | {cells} "
            f"| {st['ingress_batch']['mean_size']:.1f} | {st['forward_batch']['mean_size']:.1f} |"
        )
    ceiling = s["forward_ceiling_img_s"]
    top = max(s["clients"])
    lines += [
        "",
        "### Against the bare forward pass",
        "",
        f"The ceiling: `Engine.predict` alone (TTA off) in one process with "
        f"{s['forward_threads']} torch thread(s), as the Model replica runs it, in images/s "
        "by batch size: " + ", ".join(f"batch {b}: {v:.0f}" for b, v in ceiling.items()) + ".",
        "",
        "| upload | clients | graph req/s | mean forward batch | ceiling at that batch "
        "| share of ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g in s["graph"]:
        if g["tta"] or g["concurrency"] != top or not g.get("stages"):
            continue
        size = max(1, round(g["stages"]["forward_batch"]["mean_size"]))
        at = ceiling.get(str(size)) or ceiling[min(ceiling, key=lambda b: abs(int(b) - size))]
        lines.append(
            f"| {g['label']} | {top} | {g['rps']:.1f} | {size} | {at:.0f} | {g['rps'] / at:.0%} |"
        )
    return lines


def targets_section(s: dict[str, Any]) -> list[str]:
    rows = {key(r): r for r in s["graph"]}
    base = {key(r): r for r in s["baseline"]}
    top = max(s["clients"])
    one_off, one_on = rows.get(("png28", False, 1)), rows.get(("png28", True, 1))
    top_off, base_top = rows.get(("png28", False, top)), base.get(("png28", False, top))
    checks: list[tuple[str, str, bool, dict[str, Any] | None]] = []
    if one_off:
        checks.append(("P50 <= 15 ms, 1 client", f"{one_off['p50_ms']:.1f} ms",
                       one_off["p50_ms"] <= 15, one_off))  # fmt: skip
        checks.append(("P95 <= 30 ms, 1 client", f"{one_off['p95_ms']:.1f} ms",
                       one_off["p95_ms"] <= 30, one_off))  # fmt: skip
    if one_on:
        checks.append(("TTA on: P50 <= 35 ms, 1 client", f"{one_on['p50_ms']:.1f} ms",
                       one_on["p50_ms"] <= 35, one_on))  # fmt: skip
    if top_off and base_top:
        checks.append((f"{top} clients: req/s >= baseline",
                       f"{top_off['rps']:.1f} vs {base_top['rps']:.1f}",
                       top_off["rps"] >= base_top["rps"], top_off))  # fmt: skip
    lines = [
        "## Targets (28x28 PNG, TTA off unless said)",
        "",
        "| target | measured | met | what holds it back |",
        "|---|---|---|---|",
    ]
    for name, measured, met, row in checks:
        why = ""
        if not met and row and row.get("stages"):
            mean = row["stages"]["mean_ms"]
            worst = max(mean, key=lambda k: mean[k])
            why = f"{STAGE_NAMES[worst]}: {mean[worst]:.1f} ms of the mean read"
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} | {why} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (benchmarks/report.py): every figure below is from that run.",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}",
        "- Serving as `make serve` runs it: serve_config.yaml, HAProxy in front and gRPC "
        "between replicas (RAY_SERVE_ENABLE_HA_PROXY=1, RAY_SERVE_THROUGHPUT_OPTIMIZED=1), "
        "the shipped model.",
        "",
    ]
    pre = load(args.results, "preprocess")
    if pre:
        lines += [
            "## Preprocessing (median, one image, one core)",
            "",
            f"- 1024x1024 photo-like JPEG: {pre['jpeg1024_ms']} ms (target < 20)",
            f"- 28x28 PNG: {pre['png28_ms']} ms (target < 2)",
            "",
        ]
    cold = load(args.results, "cold_start")
    if cold:
        lines += [
            "## Cold start",
            "",
            f"`make serve` (installed, no Ray running) to `/readyz` 200: {cold['ready_s']} s "
            f"(first HTTP answer after {cold['first_http_answer_s']} s).",
            "",
        ]
    serving = load(args.results, "serving")
    if serving:
        lines += [*targets_section(serving), "", *serving_section(serving), ""]
    training = load(args.results, "training")
    if training:
        t = training
        lines += [
            "## Training",
            "",
            f"ResNet-18, batch {t['batch_size']}, bf16 autocast, no augmentation, "
            f"{t['batches']} steps per run on the same preprocessed MNIST; samples/s over the "
            "training steps (validation and start-up excluded).",
            "",
            "| loop | samples/s | wall s (with Ray start-up and validation) |",
            "|---|---:|---:|",
            f"| plain torch, 1 process, 2 threads | {t['plain_1proc_2threads']:.1f} | |",
            f"| Ray Train, 1 worker x 2 threads "
            f"| {t['ray_train_1w_2threads']['samples_per_sec']:.1f}"
            f" | {t['ray_train_1w_2threads']['wall_s']:.0f} |",
            f"| Ray Train, 2 workers x 1 thread (DDP) "
            f"| {t['ray_train_2w_1thread']['samples_per_sec']:.1f}"
            f" | {t['ray_train_2w_1thread']['wall_s']:.0f} |",
            "",
        ]
        if "full_epoch" in t:
            f = t["full_epoch"]
            lines.append(
                f"One full MNIST epoch (55,000 training images with augmentation, then 5,000 "
                f"validation) through Ray Train, 1 worker: {f['wall_s'] / 60:.1f} min wall, "
                f"{f['samples_per_sec']:.1f} samples/s."
            )
            lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
