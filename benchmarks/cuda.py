"""CUDA figures, where a GPU is lent (issue 13 asks for them; CI never runs this).

    python -m benchmarks.cuda --data ../shared/data --out artifacts/bench/cuda.json

- The forward pass as the Model replica runs it on a GPU (handai.backends' torch forwards:
  batch in from and logits out to the CPU, so each call waits for the GPU), fp32 and bf16,
  median ms at batch 1, 9, 32 and 256, images/s at 1024, the plan the service would pick,
  and bf16's agreement with fp32 on MNIST test through the real preprocessing.
- Training with the loop's own pieces (DigitDataset, BatchAugment on the GPU, bf16 autocast,
  SGD): samples/s without and with the wild augmentation, and one whole augmented MNIST
  epoch (55,000 images) with its validation accuracy.
Needs no Ray. Asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader

from benchmarks.forward import median_ms
from handai import registry
from handai.backends import Forward, candidates, fastest
from handai.model import build_model
from handai.preprocess import preprocess
from train.augment import BatchAugment
from train.augment_config import WILD
from train.data import DigitDataset, load_split, model_input, train_val
from train.evaluate import mnist_test

SIZES = (1, 9, 32, 256)


def forward_figures(forwards: dict[str, Forward]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, forward in forwards.items():
        row: dict[str, float] = {}
        for size in SIZES:
            batch = torch.randn(size, 1, 28, 28)
            row[str(size)] = median_ms(functools.partial(forward, batch), 100)
        big = torch.randn(1024, 1, 28, 28)
        row["images_per_s_1024"] = round(
            1024 / (median_ms(functools.partial(forward, big), 30) / 1000)
        )
        out[name] = row
        print(name, row, flush=True)
    return out


def agreement(forwards: dict[str, Forward], data: Path) -> dict[str, Any]:
    blobs, labels = mnist_test(data)
    batch = torch.from_numpy(np.concatenate([preprocess(blob).pixels for blob in blobs]))
    digits = {
        name: torch.cat([f(batch[i : i + 1024]) for i in range(0, len(batch), 1024)]).argmax(1)
        for name, f in forwards.items()
    }
    truth = torch.from_numpy(labels)
    base = next(n for n in digits if "fp32" in n)
    return {
        name: {
            "accuracy": round(float((d == truth).float().mean()), 5),
            "agrees_with_fp32": round(float((d == digits[base]).float().mean()), 5),
        }
        for name, d in digits.items()
    }


def train_speed(
    loader: DataLoader[Any], augment: BatchAugment | None, steps: int | None
) -> tuple[float, torch.nn.Module]:
    """Samples/s of the training step on the GPU (warm-up excluded when steps is given)."""
    device = torch.device("cuda")
    model = build_model().to(device).train()
    total = steps if steps is not None else len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total + 10)
    seen, start = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if steps is not None and step == 10:  # warm-up done: kernels chosen, workers up
            torch.cuda.synchronize()
            seen, start = 0, time.perf_counter()
        if steps is not None and step >= steps + 10:
            break
        x = model_input(x.to(device, non_blocking=True), augment)
        y = y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += len(y)
    torch.cuda.synchronize()
    return seen / (time.perf_counter() - start), model


def validate(model: torch.nn.Module, loader: DataLoader[Any]) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for x, y in loader:
            logits = model(model_input(x.cuda()))
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += len(y)
    return correct / total


def training_figures(data: Path, cache: Path) -> dict[str, Any]:
    train, val = train_val(load_split(data / "mnist", "train", cache), 0)
    out: dict[str, Any] = {}
    for batch in (128, 512):
        loader = DataLoader(
            DigitDataset(train),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=4,
            persistent_workers=True,
            pin_memory=True,
        )
        for name, augment in (("none", None), ("wild", BatchAugment(WILD))):
            speed, _ = train_speed(loader, augment, steps=60)
            out[f"samples_per_s_batch{batch}_{name}"] = round(speed)
            print(f"batch {batch}, augment {name}: {speed:.0f} samples/s", flush=True)
    loader = DataLoader(
        DigitDataset(train), batch_size=128, shuffle=True, drop_last=True, num_workers=4
    )
    start = time.perf_counter()
    speed, model = train_speed(loader, BatchAugment(WILD), steps=None)
    val_loader = DataLoader(DigitDataset(val), batch_size=1024)
    out["full_epoch"] = {
        "images": len(train.labels),
        "batch_size": 128,
        "augment": "wild",
        "seconds": round(time.perf_counter() - start, 1),
        "samples_per_s": round(speed),
        "val_acc_after_one_epoch": round(validate(model, val_loader), 4),
    }
    print("full epoch:", out["full_epoch"], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cuda", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped seed")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/handai-cache/mnist"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/cuda.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    folder = args.model or max(Path("seed").iterdir())
    loaded = registry.load(folder.parent, folder.name)
    forwards = candidates(loaded.module, loaded.sha256, "auto", 0)
    out: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "model_id": loaded.manifest.model_id,
        "forward_ms": forward_figures(forwards),
        "plan": {str(k): v for k, v in fastest(forwards, SIZES).items()},
        "agreement_mnist_test": agreement(forwards, args.data),
    }
    print("plan:", out["plan"], "agreement:", out["agreement_mnist_test"], flush=True)
    out["training"] = training_figures(args.data, args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
