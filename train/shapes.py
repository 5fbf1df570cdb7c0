"""Train handai.shapes' three CNNs: how many digits a piece of ink in a row holds, whether a
cut through it falls between two digits, and which two digits a piece of two touching ones is.

Rows of 1-8 MNIST *training* digits are rendered (train.numbers, clean and photographed, with
touching neighbours more often than in the test renders), cleaned and grouped exactly as
/v1/read/number does (handai.numbers.find_row and its cut candidates), and labelled from where
the renderer put each digit: a group by the digits whose middle falls inside it, a candidate
cut by whether it falls where one digit ends and the next begins. The pair net learns from
rows rendered with every pair of neighbours close enough to touch, from each group that holds
exactly two digits. The nets are exported to ONNX for OpenCV's DNN module.

    python -m train.shapes              # writes handai/count.onnx, cut.onnx and pair.onnx
    python -m train.shapes --nets pair  # only the pair net
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from handai import shapes
from handai.errors import HandaiError
from handai.numbers import Row, candidate_splits, find_row
from train import numbers
from train.data import DataError, read_raw

TOUCH = 0.4  # neighbours touch this often (0.15 in the test renders): pairs to learn from
NEAR = 0.1  # a cut this share of the row's height past where two digits meet is still right
ONE_DIGIT_CUTS = 0.2  # the share of cuts through single digits kept: plenty, and memory
BATCH = 128
NETS = ("count", "cut", "pair")
# The pair net's rows: (rows at --pair-rows' default, seed, styles, most digits in a row). Two
# digits always rendered touching give a pair two times in five (ink overlapping is not ink
# touching); a few rows of three, photographed too, show pairs beside a neighbour.
PAIR_ROWS = 224_000
PAIR_RENDERS: tuple[tuple[int, int, tuple[numbers.Style, ...], int], ...] = (
    (90_000, 21, ("clean",), 2),
    (24_000, 22, numbers.STYLES, 3),
    (110_000, 31, ("clean",), 2),
)
PAIR_HELD_OUT = (8_000, 23, numbers.STYLES, 3)  # rendered from MNIST's test digits
SHIFT = 2  # the pair net learns each batch moved by up to this many pixels either way
PAIR_OUTPUTS = 20  # the pair net's logits: the left digit's 10, then the right's


@dataclass
class Examples:
    """Canvases and labels of one kind: counts (class 0-2), cuts (1: between digits) or pairs
    (10 x left digit + right digit)."""

    x: list[NDArray[np.float16]]  # half precision: a few GB fewer
    y: list[int]

    def extend(self, other: Examples) -> None:
        self.x += other.x
        self.y += other.y

    def arrays(self) -> tuple[NDArray[np.float16], NDArray[np.int64]]:
        return np.stack(self.x), np.array(self.y, np.int64)


def net(
    channels: int,
    outputs: int,
    width: int = shapes.WIDTH,
    sizes: tuple[int, int, int] = (16, 32, 64),
    hidden: int = 64,
) -> nn.Module:
    """Three conv blocks, each halving the canvas (to 5 cells high, of about half a digit's
    width each), then two dense layers."""

    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(channels, sizes[0]),
        *block(sizes[0], sizes[1]),
        *block(sizes[1], sizes[2]),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(sizes[2] * (shapes.HEIGHT // 8) * (width // 8), hidden),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
    )


def pair_net() -> nn.Module:
    """Two digits' classes from the middle of one shape (shapes.PAIR_COLUMNS): the left
    digit's 10 logits, then the right's. Wider than the others: 100 pairs, not 3 counts."""
    return net(1, PAIR_OUTPUTS, shapes.PAIR_WIDTH, (32, 64, 96), 128)


def digits_of(upload: numbers.NumberUpload, row: Row) -> list[list[int]]:
    """Per group of the row, which of the renderer's digits it holds (their indices): each
    digit belongs to the group nearest its middle among those whose columns hold it (groups
    of digits that overlap without touching share columns)."""
    groups = row.groups
    held: list[list[int]] = [[] for _ in groups]
    for k, (a, b) in enumerate(upload.spans):
        middle = (a + b) / 2 / row.scale
        inside = [i for i, g in enumerate(groups) if g.x0 <= middle < g.x1]
        if inside:
            nearest = min(inside, key=lambda i: abs((groups[i].x0 + groups[i].x1) / 2 - middle))
            held[nearest].append(k)
    return held


def label_row(
    upload: numbers.NumberUpload, counts: Examples, cuts: Examples, rng: np.random.Generator
) -> None:
    """Every group of one rendered row into `counts`, every candidate cut into `cuts`."""
    try:
        row = find_row(upload.data)
    except HandaiError:
        return
    for group, held in zip(row.groups, digits_of(upload, row), strict=True):
        if not held:  # a stray stroke holds no digit's middle: nothing to learn
            continue
        # The renderer's columns of this group's digits, in its piece's working pixels.
        inside = [
            (upload.spans[k][0] / row.scale - group.x0, upload.spans[k][1] / row.scale - group.x0)
            for k in held
        ]
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


def label_pairs(upload: numbers.NumberUpload, pairs: Examples) -> None:
    """Every group of one rendered row that holds exactly two digits into `pairs`."""
    try:
        row = find_row(upload.data)
    except HandaiError:
        return
    for group, held in zip(row.groups, digits_of(upload, row), strict=True):
        if len(held) == 2:
            outline = shapes.shape(row.piece(group), row.height)[:, :, shapes.PAIR_COLUMNS]
            pairs.x.append(outline.astype(np.float16))
            pairs.y.append(10 * int(upload.number[held[0]]) + int(upload.number[held[1]]))


def _render(job: tuple[Path, numbers.Style, int, int]) -> tuple[Examples, Examples]:
    data, style, n, seed = job
    digits, labels = read_raw(data / "mnist", "train")
    counts, cuts = Examples([], []), Examples([], [])
    rng = np.random.default_rng(seed)
    for upload in numbers.render(style, digits, labels, n, seed, lengths=(1, 8), touch=TOUCH):
        label_row(upload, counts, cuts, rng)
    return counts, cuts


def _render_pairs(job: tuple[Path, str, numbers.Style, int, int, int]) -> Examples:
    data, split, style, n, seed, most = job
    digits, labels = read_raw(data / "mnist", split)
    pairs = Examples([], [])
    for upload in numbers.render(style, digits, labels, n, seed, lengths=(2, most), touch=1.0):
        label_pairs(upload, pairs)
    return pairs


def pair_dataset(
    data: Path,
    split: str,
    renders: Sequence[tuple[int, int, tuple[numbers.Style, ...], int]],
    workers: int,
) -> Examples:
    jobs = [
        (data, split, style, rows // (20 * len(styles)), seed * 1000 + k, most)
        for rows, seed, styles, most in renders
        for k in range(20)
        for style in styles
    ]
    pairs = Examples([], [])
    with Pool(workers) as pool:
        for part in pool.imap_unordered(_render_pairs, jobs):
            pairs.extend(part)
    return pairs


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


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """By what the net answers: 1 logit (a cut), 20 (a pair's two digits) or classes."""
    if logits.shape[1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    if logits.shape[1] == PAIR_OUTPUTS:
        left, right = logits[:, :10], logits[:, 10:]
        return nn.functional.cross_entropy(left, y // 10) + nn.functional.cross_entropy(
            right, y % 10
        )
    return nn.functional.cross_entropy(logits, y)


def train(examples: Examples, outputs: int, epochs: int, seed: int, shift: int = 0) -> nn.Module:
    x, y = examples.arrays()
    torch.manual_seed(seed)
    model = pair_net() if outputs == PAIR_OUTPUTS else net(x.shape[1], outputs)
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
            inputs = xs[batch].float()
            if shift:  # the canvas centres a piece to a pixel or two: learn it moved
                dy, dx = torch.randint(-shift, shift + 1, (2,)).tolist()
                inputs = torch.roll(inputs, (dy, dx), (2, 3))
            loss = _loss(model(inputs), ys[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"  epoch {epoch + 1}: loss {total / steps:.4f}", flush=True)
    return model.eval()


def confusion(model: nn.Module, examples: Examples, classes: int) -> NDArray[np.int64]:
    x, y = examples.arrays()
    logits = _logits(model, x)
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    table = np.zeros((classes, classes), np.int64)
    np.add.at(table, (y, pred.numpy()), 1)
    return table


def pair_accuracy(model: nn.Module, examples: Examples) -> float:
    """The share of pairs whose two digits are both read right."""
    x, y = examples.arrays()
    logits = _logits(model, x)
    pairs = 10 * logits[:, :10].argmax(1) + logits[:, 10:].argmax(1)
    return float((pairs.numpy() == y).mean())


def _logits(model: nn.Module, x: NDArray[np.float16]) -> torch.Tensor:
    with torch.inference_mode():
        parts = [model(torch.from_numpy(x[i : i + 1024]).float()) for i in range(0, len(x), 1024)]
    return torch.cat(parts)


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.shapes", description=__doc__)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=shapes.COUNT_MODEL.parent, help="a folder")
    p.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    p.add_argument("--rows", type=int, default=12000, help="rendered rows for count and cut")
    p.add_argument("--pair-rows", type=int, default=PAIR_ROWS, help="rendered rows for pair")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pair-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    try:  # the rows are rendered from MNIST: a missing file is a usage error, not a crash
        read_raw(args.data / "mnist", "train")
        read_raw(args.data / "mnist", "test")
    except DataError as e:
        p.error(str(e))
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if {"count", "cut"} & set(args.nets):
        counts, cuts = dataset(args.data, args.rows, args.seed + 1, args.workers)
        held_counts, held_cuts = dataset(args.data, args.rows // 4, args.seed + 2, args.workers)
        print(
            f"{len(counts.y)} pieces {np.bincount(counts.y).tolist()} by digits inside, "
            f"{len(cuts.y)} cuts {np.bincount(cuts.y).tolist()} (wrong, right); "
            f"rendered in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        for name, examples, held, outputs, classes in (
            ("count", counts, held_counts, shapes.CLASSES, shapes.CLASSES),
            ("cut", cuts, held_cuts, 1, 2),
        ):
            if name not in args.nets:
                continue
            print(f"{name}:", flush=True)
            model = train(examples, outputs, args.epochs, args.seed)
            table = confusion(model, held, classes)
            print(f"  held out, true (rows) x predicted (columns):\n{table}")
            print(f"  {name} held-out accuracy {np.trace(table) / table.sum():.4f}", flush=True)
            export(model, examples.x[0], args.out / f"{name}.onnx")
    if "pair" in args.nets:
        scale = args.pair_rows / PAIR_ROWS
        renders = [(round(n * scale), seed, st, most) for n, seed, st, most in PAIR_RENDERS]
        pairs = pair_dataset(args.data, "train", renders, args.workers)
        n, seed, styles, most = PAIR_HELD_OUT
        held = pair_dataset(
            args.data, "test", [(round(n * scale), seed, styles, most)], args.workers
        )
        print(f"pair: {len(pairs.y)} pairs ({len(held.y)} held out)", flush=True)
        model = train(pairs, PAIR_OUTPUTS, args.pair_epochs, args.seed, shift=SHIFT)
        print(f"  pair held-out accuracy {pair_accuracy(model, held):.4f}", flush=True)
        export(model, pairs.x[0], args.out / "pair.onnx")
    written = ", ".join(f"{name}.onnx" for name in args.nets)
    print(f"wrote {written} to {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
