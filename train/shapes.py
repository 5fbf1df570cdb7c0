"""Train handai.shapes' two CNNs: how many digits a piece of ink in a row holds, and whether a
cut through it falls between two digits.

Rows of 1-8 MNIST *training* digits are rendered (train.numbers, clean and photographed, with
touching neighbours more often than in the test renders), cleaned and grouped exactly as
/v1/read/number does (handai.numbers.find_row and its cut candidates), and labelled from where
the renderer put each digit: a group by the digits whose middle falls inside it, a candidate
cut by whether it falls where one digit ends and the next begins. Both nets are exported to
ONNX for OpenCV's DNN module.

    python -m train.shapes            # writes handai/count.onnx and handai/cut.onnx
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from handai import shapes
from handai.errors import HandaiError
from handai.numbers import candidate_splits, find_row
from train import numbers
from train.data import read_raw

TOUCH = 0.4  # neighbours touch this often (0.15 in the test renders): pairs to learn from
NEAR = 0.1  # a cut this share of the row's height past where two digits meet is still right
ONE_DIGIT_CUTS = 0.2  # the share of cuts through single digits kept: plenty, and memory
BATCH = 128


@dataclass
class Examples:
    """Canvases and labels of one kind: counts (class 0-2) or cuts (1: between digits)."""

    x: list[NDArray[np.float16]]  # half precision: a few GB fewer
    y: list[int]

    def extend(self, other: Examples) -> None:
        self.x += other.x
        self.y += other.y

    def arrays(self) -> tuple[NDArray[np.float16], NDArray[np.int64]]:
        return np.stack(self.x), np.array(self.y, np.int64)


def net(channels: int, outputs: int) -> nn.Module:
    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(channels, 16),
        *block(16, 32),
        *block(32, 64),  # 5 x 12 cells of about half a digit's width each
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(64 * (shapes.HEIGHT // 8) * (shapes.WIDTH // 8), 64),
        nn.ReLU(),
        nn.Linear(64, outputs),
    )


def label_row(
    upload: numbers.NumberUpload, counts: Examples, cuts: Examples, rng: np.random.Generator
) -> None:
    """Every group of one rendered row into `counts`, every candidate cut into `cuts`."""
    try:
        row = find_row(upload.data)
    except HandaiError:
        return
    # Each digit belongs to the group nearest its middle among those whose columns hold it
    # (groups of digits that overlap without touching share columns).
    middles = [(a + b) / 2 / row.scale for a, b in upload.spans]
    owner = [
        min(
            (g for g in row.groups if g.x0 <= m < g.x1),
            key=lambda g: abs((g.x0 + g.x1) / 2 - m),
            default=None,
        )
        for m in middles
    ]
    for group in row.groups:
        # The renderer's columns of this group's digits, in its piece's working pixels.
        inside = [
            (a / row.scale - group.x0, b / row.scale - group.x0)
            for (a, b), g in zip(upload.spans, owner, strict=True)
            if g is group
        ]
        if not inside:  # a stray stroke holds no digit's middle: nothing to learn
            continue
        piece = row.piece(group)
        counts.x.append(shapes.shape(piece, row.height).astype(np.float16))
        counts.y.append(min(len(inside), shapes.CLASSES) - 1)
        meets = [(min(b, c), max(b, c)) for (_, b), (c, _) in itertools.pairwise(inside)]
        near = NEAR * row.height
        for bounds in candidate_splits(piece, row.typical):
            for x in bounds[1:-1]:
                if not meets and rng.random() > ONE_DIGIT_CUTS:
                    continue
                right = any(lo - near <= x <= hi + near for lo, hi in meets)
                cuts.x.append(shapes.shape(piece, row.height, cut=x).astype(np.float16))
                cuts.y.append(int(right))


def _render(job: tuple[Path, numbers.Style, int, int]) -> tuple[Examples, Examples]:
    data, style, n, seed = job
    digits, labels = read_raw(data / "mnist", "train")
    counts, cuts = Examples([], []), Examples([], [])
    rng = np.random.default_rng(seed)
    for upload in numbers.render(style, digits, labels, n, seed, lengths=(1, 8), touch=TOUCH):
        label_row(upload, counts, cuts, rng)
    return counts, cuts


def dataset(data: Path, rows: int, seed: int, workers: int) -> tuple[Examples, Examples]:
    jobs = [
        (data, style, rows // 20, seed * 1000 + k) for k in range(10) for style in numbers.STYLES
    ]
    counts, cuts = Examples([], []), Examples([], [])
    with Pool(workers) as pool:
        for part_counts, part_cuts in pool.map(_render, jobs):
            counts.extend(part_counts)
            cuts.extend(part_cuts)
    return counts, cuts


def train(examples: Examples, outputs: int, epochs: int, seed: int) -> nn.Module:
    x, y = examples.arrays()
    torch.manual_seed(seed)
    model = net(x.shape[1], outputs)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = max(1, len(y) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(ys))
        total = 0.0
        for i in range(steps):
            batch = order[i * BATCH : (i + 1) * BATCH]
            logits = model(xs[batch].float())
            if outputs == 1:
                loss = nn.functional.binary_cross_entropy_with_logits(
                    logits[:, 0], ys[batch].float()
                )
            else:
                loss = nn.functional.cross_entropy(logits, ys[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"  epoch {epoch + 1}: loss {total / steps:.4f}", flush=True)
    return model.eval()


def confusion(model: nn.Module, examples: Examples, classes: int) -> NDArray[np.int64]:
    x, y = examples.arrays()
    with torch.inference_mode():
        logits = model(torch.from_numpy(x).float())
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    table = np.zeros((classes, classes), np.int64)
    np.add.at(table, (y, pred.numpy()), 1)
    return table


def export(model: nn.Module, example: NDArray[np.float16], path: Path) -> None:
    torch.onnx.export(
        model,
        (torch.from_numpy(example[None].astype(np.float32)),),
        str(path),
        dynamo=False,
        input_names=["shape"],
        output_names=["logits"],
        dynamic_axes={"shape": {0: "n"}, "logits": {0: "n"}},
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m train.shapes", description=__doc__)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=shapes.COUNT_MODEL.parent, help="a folder")
    p.add_argument("--rows", type=int, default=12000, help="rendered rows to learn from")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    start = time.perf_counter()
    counts, cuts = dataset(args.data, args.rows, args.seed + 1, args.workers)
    held_counts, held_cuts = dataset(args.data, args.rows // 4, args.seed + 2, args.workers)
    print(
        f"{len(counts.y)} pieces {np.bincount(counts.y).tolist()} by digits inside, "
        f"{len(cuts.y)} cuts {np.bincount(cuts.y).tolist()} (wrong, right); "
        f"rendered in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name, examples, held, outputs, classes in (
        ("count", counts, held_counts, shapes.CLASSES, shapes.CLASSES),
        ("cut", cuts, held_cuts, 1, 2),
    ):
        print(f"{name}:", flush=True)
        model = train(examples, outputs, args.epochs, args.seed)
        table = confusion(model, held, classes)
        print(f"  held out, true (rows) x predicted (columns):\n{table}")
        print(f"  {name} held-out accuracy {np.trace(table) / table.sum():.4f}", flush=True)
        export(model, examples.x[0], args.out / f"{name}.onnx")
    print(f"wrote {args.out}/count.onnx and cut.onnx in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
