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
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from handai.backends import cpu_name

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


def cell(row: dict[str, Any]) -> str:
    """A serving row's first three columns: upload, TTA, clients."""
    return f"| {row['label']} | {'on' if row['tta'] else 'off'} | {row['concurrency']} "


def latencies(row: dict[str, Any]) -> str:
    return f"{row['p50_ms']:.1f} / {row['p95_ms']:.1f} / {row['p99_ms']:.1f}"


def paired(
    graph: list[dict[str, Any]], other: list[dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each graph row with the other server's row for the same upload, TTA and clients."""
    by_key = {key(r): r for r in other}
    for g in graph:
        if (o := by_key.get(key(g))) is not None:
            yield g, o


def serving_section(s: dict[str, Any]) -> list[str]:
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
    for g, b in paired(s["graph"], s["baseline"]):
        lines.append(
            cell(g) + f"| {latencies(g)} | {g['rps']:.1f} | {latencies(b)} | {b['rps']:.1f} "
            f"| {g['p50_ms'] / b['p50_ms']:.2f} | {g['rps'] / b['rps']:.2f} "
            f"| {g['failures']} / {b['failures']} |"
        )
    if s.get("baseline_torch"):
        lines += [
            "",
            "### Against the plain server on plain torch",
            "",
            'The same baseline with `app.backend = "torch"` (fp32 or bf16 torch per batch '
            "size, by measurement): the forward pass the service Handai replaced ran, and what "
            "the issue's first figures compared against. Context only: the targets above "
            "compare the graph with the plain server on the graph's own forward pass.",
            "",
            "| upload | TTA | clients | graph p50 ms | graph req/s | plain torch p50 / p95 / "
            "p99 ms | plain torch req/s | p50 ratio | req/s ratio |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for g, t in paired(s["graph"], s["baseline_torch"]):
            lines.append(
                cell(g) + f"| {g['p50_ms']:.1f} | {g['rps']:.1f} | {latencies(t)} | {t['rps']:.1f} "
                f"| {g['p50_ms'] / t['p50_ms']:.2f} | {g['rps'] / t['rps']:.2f} |"
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
            cell(g) + f"| {cells} "
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


def forward_section(f: dict[str, Any]) -> list[str]:
    lines = [
        "## The forward pass, per backend",
        "",
        f"`benchmarks/forward.py`: the shipped model, {f['threads']} thread(s) as the Model "
        f"replica runs it, median of {f['runs']} runs; every candidate measured side by side "
        "in one run (ratios hold across machines better than the figures).",
        "",
        "| backend | batch 1 ms | batch 9 ms (one TTA read) | batch 32 ms | images/s at 32 "
        "| batch 1 speed-up on torch fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = f["backends"]["torch-fp32"]["1"]
    for name, b in f["backends"].items():
        lines.append(
            f"| {name} | {b['1']:.2f} | {b['9']:.2f} | {b['32']:.2f} | {b['img_s_at_32']:.0f} "
            f"| {base / b['1']:.1f}x |"
        )
    served = f["served"]
    lines += [
        "",
        f'Served here (fastest measured per batch size, `app.backend = "auto"`): {served["name"]}.',
        "",
        "Answers of the served forward against fp32 torch, through the real preprocessing "
        "(TTA rows: a sample of MNIST test):",
        "",
        "| set | TTA | images | same digit | accuracy fp32 -> served | ECE fp32 -> served |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in f["agreement"]:
        lines.append(
            f"| {r['set']} | {'on' if r['tta'] else 'off'} | {r['images']} "
            f"| {r['agree_pct']:.2f} % "
            f"| {r['acc_fp32_pct']:.2f} -> {r['acc_served_pct']:.2f} % "
            f"| {r['ece_fp32_pct']:.2f} -> {r['ece_served_pct']:.2f} % |"
        )
    return lines


Check = tuple[str, str, bool, dict[str, Any] | None]


def forward_checks(f: dict[str, Any]) -> list[Check]:
    served = f["served"]
    rows = f["agreement"]
    agree = sum(r["agree_pct"] * r["images"] for r in rows) / sum(r["images"] for r in rows)
    worst_acc = max(abs(r["acc_served_pct"] - r["acc_fp32_pct"]) for r in rows)
    worst_ece = max(abs(r["ece_served_pct"] - r["ece_fp32_pct"]) for r in rows)
    return [
        ("Forward pass, batch 1 <= 3 ms", f"{served['1']:.2f} ms", served["1"] <= 3, None),
        (
            "Forward pass, one TTA read (9 views) <= 20 ms",
            f"{served['9']:.2f} ms",
            served["9"] <= 20,
            None,
        ),
        (
            "Forward pass >= 450 images/s batched",
            f"{served['img_s_at_64']:.0f} at batch 64",
            served["img_s_at_64"] >= 450,
            None,
        ),
        (
            "Served answers agree with fp32 torch >= 99.95 %",
            f"{agree:.3f} %",
            agree >= 99.95,
            None,
        ),
        (
            "Accuracy and ECE within 0.05 points of fp32",
            f"accuracy {worst_acc:.2f}, ECE {worst_ece:.2f} points at most",
            worst_acc <= 0.05 and worst_ece <= 0.05,
            None,
        ),
    ]


def serving_checks(s: dict[str, Any]) -> list[Check]:
    rows = {key(r): r for r in s["graph"]}
    base = {key(r): r for r in s["baseline"]}
    # The same plain server on plain torch, as the service Handai replaced ran: context only,
    # the targets compare against the plain server with the graph's own forward pass.
    torch_base = {key(r): r for r in s.get("baseline_torch", [])}
    top = max(s["clients"])
    one_off, one_on = rows.get(("png28", False, 1)), rows.get(("png28", True, 1))
    base_one = base.get(("png28", False, 1))
    top_off, base_top = rows.get(("png28", False, top)), base.get(("png28", False, top))
    torch_one, torch_top = (
        torch_base.get(("png28", False, 1)),
        torch_base.get(("png28", False, top)),
    )

    def on_torch(text: str) -> str:
        return f" (on plain torch: {text})" if torch_base else ""

    checks: list[Check] = []
    if one_off and base_one:
        checks.append(
            (
                "1 client: p50 <= the plain server's",
                f"{one_off['p50_ms']:.1f} vs {base_one['p50_ms']:.1f} ms"
                + on_torch(f"{torch_one['p50_ms']:.1f} ms" if torch_one else "-"),
                one_off["p50_ms"] <= base_one["p50_ms"],
                one_off,
            )
        )
    if one_on and base_one:
        checks.append(
            (
                "TTA on, 1 client: p50 <= 1.5x the plain server's TTA-off p50",
                f"{one_on['p50_ms']:.1f} ms = {one_on['p50_ms'] / base_one['p50_ms']:.2f}x"
                + on_torch(f"{one_on['p50_ms'] / torch_one['p50_ms']:.2f}x" if torch_one else "-"),
                one_on["p50_ms"] <= 1.5 * base_one["p50_ms"],
                one_on,
            )
        )
    if top_off and base_top:
        ratio = top_off["rps"] / base_top["rps"]
        checks.append(
            (
                f"{top} clients: req/s >= 3x the plain server's",
                f"{top_off['rps']:.1f} vs {base_top['rps']:.1f} = {ratio:.2f}x"
                + on_torch(
                    f"{torch_top['rps']:.1f}, {top_off['rps'] / torch_top['rps']:.2f}x"
                    if torch_top
                    else "-"
                ),
                ratio >= 3,
                top_off,
            )
        )
    ceiling = s["forward_ceiling_img_s"]
    if top_off and top_off.get("stages"):
        size = max(1, round(top_off["stages"]["forward_batch"]["mean_size"]))
        at = ceiling.get(str(size)) or ceiling[min(ceiling, key=lambda b: abs(int(b) - size))]
        checks.append(
            (
                f"{top} clients: >= 70 % of the forward-pass ceiling at its batch",
                f"{top_off['rps'] / at:.0%} of {at:.0f} images/s (batch {size})",
                top_off["rps"] >= 0.7 * at,
                top_off,
            )
        )
    return checks


def rounds_note(t: dict[str, Any]) -> str:
    """How the plain loop beside Ray and 1-worker Ray Train were paired, each round's figures."""
    if "rounds" not in t:  # results from before the rounds: one run each
        return ""
    runs = ", ".join(
        f"{r['plain_ray_up']:.1f} / {r['ray_train_1w_2threads']['samples_per_sec']:.1f}"
        for r in t["rounds"]
    )
    return (
        f"; the plain loop beside Ray and Ray Train with 1 worker: the median of "
        f"{len(t['rounds'])} alternating runs each ({runs})"
    )


def training_checks(t: dict[str, Any]) -> list[Check]:
    # The loop against the loop: both beside Ray's idle daemons (the plain loop without Ray
    # is in the table too; the daemons' share of 2 cores is the machine's, not the loop's).
    plain = t.get("plain_ray_up", t["plain_1proc_2threads"])
    alone = t["plain_1proc_2threads"]
    one = t["ray_train_1w_2threads"]["samples_per_sec"]
    two = t["ray_train_2w_1thread"]["samples_per_sec"]
    # Alternating rounds: the median of each Ray Train run over the plain run before it.
    ratio = (
        statistics.median(
            r["ray_train_1w_2threads"]["samples_per_sec"] / r["plain_ray_up"] for r in t["rounds"]
        )
        if "rounds" in t
        else one / plain
    )
    paired = f"median of {len(t['rounds'])} paired runs; medians " if "rounds" in t else ""
    checks: list[Check] = [
        (
            "Training: Ray Train 1 worker >= 0.95x a plain torch loop",
            f"{ratio:.2f}x ({paired}{one:.1f} vs {plain:.1f} = {one / plain:.2f}x; "
            f"plain loop with Ray's daemons up; {one / alone:.2f}x of it without Ray)",
            ratio >= 0.95,
            None,
        ),
        (
            "Training: 2 workers faster than 1",
            f"{two:.1f} vs {one:.1f} samples/s",
            two > one,
            None,
        ),
    ]
    if "full_epoch" in t:
        minutes = t["full_epoch"]["wall_s"] / 60
        checks.append(
            (
                "Training: one augmented MNIST epoch <= 5 min",
                f"{minutes:.1f} min",
                minutes <= 5,
                None,
            )
        )
    return checks


def cuda_section(c: dict[str, Any]) -> list[str]:
    """benchmarks/cuda.py's figures, from a GPU machine when one was lent (copied into the
    results folder by hand: `make bench` never needs a GPU)."""
    lines = [
        f"## On a GPU: {c['gpu']}, torch {c['torch']} (benchmarks/cuda.py)",
        "",
        "Forward pass as the Model replica runs it there (batch in from, logits out to the "
        "CPU), median ms:",
        "",
        "| forward | batch 1 | batch 9 | batch 32 | batch 256 | images/s at 1024 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in c["forward_ms"].items():
        lines.append(
            f"| {name} | {row['1']} | {row['9']} | {row['32']} | {row['256']} "
            f"| {row['images_per_s_1024']:,} |"
        )
    agree = ", ".join(
        f"{name} {a['accuracy']:.2%} accurate, {a['agrees_with_fp32']:.2%} agreeing"
        for name, a in c["agreement_mnist_test"].items()
    )
    t = c["training"]
    epoch = t["full_epoch"]
    lines += [
        "",
        f"Served plan: {c['plan']}. MNIST test through the real preprocessing: {agree}.",
        "",
        "Training step (ResNet-18, bf16 autocast, SGD, the loop's DigitDataset and "
        "BatchAugment on the GPU), samples/s: "
        f"batch 128 {t['samples_per_s_batch128_none']:,} without augmentation, "
        f"{t['samples_per_s_batch128_wild']:,} with the wild one; batch 512 "
        f"{t['samples_per_s_batch512_none']:,} / {t['samples_per_s_batch512_wild']:,}. "
        f"One whole wild-augmented epoch ({epoch['images']:,} images, batch "
        f"{epoch['batch_size']}): {epoch['seconds']} s, validation accuracy "
        f"{epoch['val_acc_after_one_epoch']:.2%} from scratch.",
    ]
    return lines


def targets_section(checks: list[Check]) -> list[str]:
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


def measured_at(results: Path) -> str:
    """When each result file was written: a rerun of one part keeps the others' figures."""
    return ", ".join(
        f"{path.stem} {datetime.datetime.fromtimestamp(path.stat().st_mtime):%Y-%m-%d %H:%M}"
        for path in sorted(results.glob("*.json"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (benchmarks/report.py) from the result files below; a part "
        "rerun alone (`python -m benchmarks.<part>`) replaces only its own figures.",
        "",
        f"- Written {datetime.date.today().isoformat()}; results: {measured_at(args.results)}",
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
    forward = load(args.results, "forward")
    serving = load(args.results, "serving")
    training = load(args.results, "training")
    checks = [
        *(forward_checks(forward) if forward else []),
        *(serving_checks(serving) if serving else []),
        *(training_checks(training) if training else []),
    ]
    lines += [*targets_section(checks), ""]
    if forward:
        lines += [*forward_section(forward), ""]
    if serving:
        lines += [*serving_section(serving), ""]
    if training:
        t = training
        lines += [
            "## Training",
            "",
            f"ResNet-18, batch {t['batch_size']}, bf16 autocast, "
            f"{t.get('layout', 'contiguous')} layout, no augmentation, {t['batches']} steps "
            "per run on the same preprocessed MNIST; samples/s over the "
            f"training steps (validation and start-up excluded){rounds_note(t)}.",
            "",
            "| loop | samples/s | wall s (with Ray start-up and validation) |",
            "|---|---:|---:|",
            f"| plain torch, 1 process, 2 threads | {t['plain_1proc_2threads']:.1f} | |",
            *(
                [f"| the same, beside Ray's idle daemons | {t['plain_ray_up']:.1f} | |"]
                if "plain_ray_up" in t
                else []
            ),
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
    cuda = load(args.results, "cuda")
    if cuda:
        lines += [*cuda_section(cuda), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
