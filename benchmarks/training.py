"""Training speed: the Ray Train loop (1 and 2 workers) against a plain torch loop.

    .venv/bin/python -m benchmarks.training --out artifacts/bench/training.json [--full-epoch]

All run the same ResNet-18, the same preprocessed MNIST batches (no augmentation, so the
loop is what is measured), the same autocast (bf16 where the CPU does it natively) and the
same memory layout (train.layout's measured choice), for the same number of batches. The
plain loop runs twice: before Ray starts, and beside Ray's idle daemons as Ray Train does.
Samples/s count training steps only (data loading included, validation excluded). On 2 cores
one run of each swings by +-5 % (Ray's daemons wake when they will), so the plain loop beside
Ray and the 1-worker Ray Train run alternate for --rounds rounds: each Ray Train run is set
against the plain run just before it, and the median of those ratios is the figure.
--full-epoch also times one whole MNIST epoch (55,000 images and validation) through Ray
Train with the seed model's settings. Starts its own local Ray; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.nn.functional as F  # noqa: N812
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader

from handai.backends import native_bf16
from handai.config import load_settings
from handai.model import build_model
from train.augment_config import DEFAULT, NONE
from train.data import DigitDataset, load_split, model_input, train_val
from train.layout import LAYOUTS, fastest_layout
from train.trainer import TrainConfig, train_loop

BATCH = 128


def plain_loop(cfg: TrainConfig, batches: int, threads: int, layout: str) -> float:
    """Samples/s of a single-process loop: the same data, model, optimizer, autocast and
    layout."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    train, _ = train_val(load_split(cfg.data_root, "train", cfg.cache_dir, cfg.train_limit), 0)
    loader = DataLoader(DigitDataset(train), batch_size=BATCH, shuffle=True, drop_last=True)
    bf16 = native_bf16(torch.device("cpu"))  # as the trainer decides: emulated bf16 is slow
    model = build_model().to(memory_format=LAYOUTS[layout]).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    seen, start = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= batches:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(model_input(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def ray_train(cfg: TrainConfig, workers: int, storage: str) -> dict[str, Any]:
    """Samples/s (all workers) and wall time of one Ray Train run."""
    start = time.perf_counter()
    result = TorchTrainer(
        train_loop,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, resources_per_worker={"CPU": 1}
        ),
        run_config=ray.train.RunConfig(
            name=f"bench-{workers}w-{time.time_ns()}", storage_path=storage
        ),
    ).fit()
    metrics = result.metrics or {}
    return {
        "samples_per_sec": round(float(metrics.get("samples_per_sec", 0.0)), 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "val_acc": metrics.get("val_acc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=30, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="plain / Ray Train pairs")
    parser.add_argument("--full-epoch", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/training.json"))
    args = parser.parse_args()
    settings = load_settings()
    artifacts = settings.storage.artifacts
    base = TrainConfig(
        model_id="bench",
        run_id="bench",
        epochs=1,
        batch_size=BATCH,
        lr=0.05,
        augment=NONE,
        data_root=(settings.app.data_root / "mnist").resolve(),
        cache_dir=artifacts / "cache",
        train_limit=5000 + BATCH * args.batches + BATCH,  # 5,000 validation images
        max_batches=args.batches,
        threads_per_worker=2,
    )
    load_split(base.data_root, "train", base.cache_dir)  # build the cache outside the timings
    out: dict[str, Any] = {"batch_size": BATCH, "batches": args.batches, "cores": os.cpu_count()}
    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    out["layout"] = layout = fastest_layout(cpu, native_bf16(cpu), BATCH)  # as the trainer does
    out["plain_1proc_2threads"] = round(plain_loop(base, args.batches, 2, layout), 1)
    print("plain loop:", out["plain_1proc_2threads"], "samples/s", flush=True)
    ray.init(num_cpus=os.cpu_count(), logging_level=logging.ERROR, log_to_driver=False)
    # Again with Ray's daemons up and idle, as Ray Train runs beside them: on 2 cores their
    # ~7 % of a core costs a 2-thread loop ~7 % (a preempted thread stalls the other at each
    # parallel region), which is the machine's share, not the Ray Train loop's.
    time.sleep(5)
    with tempfile.TemporaryDirectory() as storage:
        plains: list[float] = []
        ones: list[dict[str, Any]] = []
        for _ in range(args.rounds):  # alternating: a slow minute slows both sides alike
            plains.append(round(plain_loop(base, args.batches, 2, layout), 1))
            ones.append(ray_train(base, 1, storage))
            print(f"plain loop, Ray up: {plains[-1]}; ray train, 1 worker: {ones[-1]}", flush=True)
        out["rounds"] = [
            {"plain_ray_up": plain, "ray_train_1w_2threads": one}
            for plain, one in zip(plains, ones, strict=True)
        ]
        out["plain_ray_up"] = statistics.median(plains)
        out["ray_train_1w_2threads"] = {
            key: statistics.median(o[key] for o in ones) for key in ("samples_per_sec", "wall_s")
        }
        two = base.model_copy(update={"threads_per_worker": 1})
        out["ray_train_2w_1thread"] = ray_train(two, 2, storage)
        print("ray train, 2 workers:", out["ray_train_2w_1thread"], flush=True)
        if args.full_epoch:
            # The seed model's settings: 1 worker, 2 threads, 1 loader process, augmentation.
            full = base.model_copy(
                update={
                    "train_limit": None,
                    "max_batches": None,
                    "augment": DEFAULT,
                    "loader_workers": 1,
                }
            )
            out["full_epoch"] = ray_train(full, 1, storage)
            print("full epoch:", out["full_epoch"], flush=True)
    ray.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
