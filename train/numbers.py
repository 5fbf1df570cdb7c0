"""Seeded renders of whole numbers (2-6 digits in a row) from MNIST test and hwd1000 digits.

- clean: dark digits on white, as drawn in an app or scanned: spacing from wide to touching,
  baseline drift, digit sizes varying by +-15 %.
- photo: the same rows written on notebook paper and photographed (train.wild's paper,
  lighting, camera and JPEG).

    python -m train.numbers --out artifacts/numbers --n 50
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from train import wild
from train.data import DataError
from train.wild import Float

Style = Literal["clean", "photo"]
STYLES: tuple[Style, ...] = ("clean", "photo")


@dataclass(frozen=True)
class NumberUpload:
    data: bytes
    number: str
    style: Style
    touching: bool  # at least one pair of neighbours overlaps
    spans: tuple[tuple[int, int], ...]  # each digit's columns, [x0, x1) in the upload's pixels


def row_of(
    digits: list[NDArray[np.uint8]], rng: np.random.Generator, height: int, touch: float = 0.15
) -> tuple[Float, bool, list[tuple[int, int]]]:
    """Light-on-dark digits side by side in [0, 1], with a margin; whether any touch (each
    neighbour does with odds `touch`); each digit's columns."""
    pieces = []
    for digit in digits:
        # Solid pen or brush strokes, as written or drawn (MNIST's own are faint in places).
        strokes = wild.pen_ink(digit, 4 * height, rng, rng.uniform(0.7, 1.8))
        ys, xs = np.nonzero(strokes > 0.1)
        crop = strokes[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        h = max(8, round(height * rng.uniform(0.85, 1.15)))
        w = max(3, round(crop.shape[1] * h / crop.shape[0]))
        pieces.append(np.asarray(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)))
    # Mostly apart, sometimes close enough to touch.
    gaps = [
        (rng.uniform(-0.1, 0.05) if rng.random() < touch else rng.uniform(0.05, 0.6)) * height
        for _ in pieces[1:]
    ]
    touching = any(g < 0.02 * height for g in gaps)
    margin = height // 2
    width = sum(p.shape[1] for p in pieces) + int(sum(gaps)) + 2 * margin
    canvas = np.zeros((2 * height + 2 * margin, max(width, height)), np.float32)
    x, drift = float(margin), 0.0
    spans = []
    for k, piece in enumerate(pieces):
        drift += rng.uniform(-0.08, 0.08) * height
        top = int(margin + height // 2 + drift + (height - piece.shape[0]) / 2)
        top = min(max(top, 0), canvas.shape[0] - piece.shape[0])
        left = int(x)
        spans.append((left, left + piece.shape[1]))
        region = canvas[top : top + piece.shape[0], left : left + piece.shape[1]]
        np.maximum(region, np.clip(piece[:, : region.shape[1]], 0, 1), out=region)
        x += piece.shape[1] + (gaps[k] if k < len(gaps) else 0)
    rows, _ = np.nonzero(canvas > 0.05)
    canvas = canvas[max(0, rows.min() - margin) : rows.max() + margin + 1]
    return canvas, touching, spans


def clean(row: Float, rng: np.random.Generator) -> bytes:
    ink = np.clip(row * rng.uniform(0.9, 1.1), 0, 1)[..., None]
    img = np.ones((*row.shape, 3), np.float32) * (1 - ink)
    return wild._encode_png(img)


def photo(row: Float, rng: np.random.Generator) -> tuple[bytes, int]:
    """The photo, and how far right the row moved in it (before the camera's small warp)."""
    h, w = row.shape
    pad = int(rng.uniform(0.1, 0.5) * w)
    ink = np.pad(row, ((pad // 2, pad // 2), (pad // 4, pad // 4)))
    h, w = ink.shape
    colour = np.array([rng.uniform(0.02, 0.2)] * 3, np.float32)
    alpha = (np.clip(ink, 0, 1) * rng.uniform(0.8, 1.0))[..., None]
    img = wild._paper(h, w, rng, lines=True) * (1 - alpha) + colour * alpha
    img *= wild._lighting(h, w, rng, (0.1, 0.35))[..., None]
    img = wild._camera(img, rng, tilt=4.0, keystone=0.04)
    img += rng.normal(0, rng.uniform(0.005, 0.015), img.shape).astype(np.float32)
    return wild._encode_jpeg(img, int(rng.integers(60, 91))), pad // 4


def render(
    style: Style,
    digits: NDArray[np.uint8],
    labels: NDArray[np.int64],
    n: int,
    seed: int = 0,
    lengths: tuple[int, int] = (2, 6),
    touch: float = 0.15,
) -> Iterator[NumberUpload]:
    """n numbers of one style; the same seed gives the same files."""
    rng = np.random.default_rng([seed, 100 + STYLES.index(style)])
    for _ in range(n):
        k = int(rng.integers(lengths[0], lengths[1] + 1))
        picks = rng.choice(len(labels), size=k, replace=False)
        height = int(rng.integers(28, 90))
        row, touching, spans = row_of([digits[i] for i in picks], rng, height, touch)
        data, shift = (clean(row, rng), 0) if style == "clean" else photo(row, rng)
        number = "".join(str(int(labels[i])) for i in picks)
        moved = tuple((a + shift, b + shift) for a, b in spans)
        yield NumberUpload(data, number, style, touching, moved)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.numbers", description=__doc__)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("artifacts/numbers"))
    p.add_argument("--n", type=int, default=50, help="numbers per style")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        digits, labels = wild.sources(args.data)
    except DataError as e:  # a usage error, not a crash: say which file, no traceback
        p.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "number", "style", "touching"])
        for style in STYLES:
            for i, upload in enumerate(render(style, digits, labels, args.n, args.seed)):
                ext = "png" if upload.data[:4] == b"\x89PNG" else "jpg"
                name = f"{style}-{i:04d}-{upload.number}.{ext}"
                (args.out / name).write_bytes(upload.data)
                writer.writerow([name, upload.number, style, upload.touching])
    print(f"wrote {args.n * len(STYLES)} numbers to {args.out}")


if __name__ == "__main__":
    main()
