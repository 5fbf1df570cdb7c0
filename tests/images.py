"""Test images made on the fly, and the real hand-drawn set beside the project."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HWD = DATA / "hwd1000" / "img"
MNIST = DATA / "mnist"


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def draw_seven(size: int = 200, width: int = 12, ink: int = 0, paper: int = 255) -> Image.Image:
    """A 7 (two strokes) on a square canvas, dark ink on light paper by default."""
    img = Image.new("L", (size, size), paper)
    d = ImageDraw.Draw(img)
    s = size / 200
    d.line([(50 * s, 40 * s), (150 * s, 40 * s)], fill=ink, width=width)
    d.line([(150 * s, 40 * s), (90 * s, 170 * s)], fill=ink, width=width)
    return img


def binary_digit(rng: np.random.Generator) -> NDArray[np.uint8]:
    """A random blocky stroke shape, pure black on white: thresholding can't vary."""
    img = Image.new("L", (40, 40), 255)
    d = ImageDraw.Draw(img)
    pts = [(int(x), int(y)) for x, y in rng.integers(4, 36, size=(4, 2))]
    d.line(pts, fill=0, width=4)
    d.line([(20, 4), (20, 36)], fill=0, width=4)  # keeps it tall, so one component dominates
    return np.asarray(img, dtype=np.uint8)


def hwd_files() -> list[Path]:
    return sorted(HWD.glob("*.png"))
