"""Uploads as the bot's users send them, rendered from real handwriting, with a seed.

    python -m train.wild --data ../shared/data --out artifacts/wild --n 200

Each style turns an MNIST or hwd1000 digit into an image file (PNG or JPEG bytes):
- photo: a pen digit on tinted notebook paper, ruled or grid lines, keystone and tilt,
  light falloff, soft hand or phone shadows, JPEG q55-90, 320-1024 px, the digit 15-60 % of
  the frame's height, anywhere in it;
- pencil: faint, grainy graphite under a strong shadow, slight blur, a stray mark away from
  the digit, JPEG q40-60;
- screenshot: a brush digit in a paint app, light or dark mode, 200-600 px, PNG;
- tight: a 16x16 scan cropped to the ink and scaled up, the digit touching every edge.

The serving path never sees this module; `train.evaluate` scores a model on its output and
tests use it for images nobody hand-tuned the preprocessing to.
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

Style = Literal["photo", "pencil", "screenshot", "tight"]
STYLES: tuple[Style, ...] = ("photo", "pencil", "screenshot", "tight")
Float = NDArray[np.float32]


@dataclass(frozen=True)
class Upload:
    data: bytes
    label: int
    style: Style
    ext: str  # "png" or "jpg"
    light_ink: bool  # light strokes on a dark background (a dark-mode screenshot, say)


def pen_ink(digit: NDArray[np.uint8], side: int, rng: np.random.Generator, width: float) -> Float:
    """A 28x28 light-on-dark digit as solid pen strokes on a side x side canvas, in [0, 1].

    MNIST's grey, blurred strokes are upscaled, then made solid with anti-aliased edges;
    `width` (about 0.5 thin pen .. 2.5 marker) thins or thickens them first.
    """
    # Against the digit's own darkest ink, not black: a faint source (hwd1000 has digits
    # whose darkest pixel is 150) was otherwise cut to dots and dashes no pen leaves.
    small = (digit / max(float(digit.max()), 1.0)).astype(np.float32)
    up = np.asarray(cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC), np.float32)
    radius = round(abs(width - 1.0) * side / 56)
    if radius:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        grown = cv2.dilate(up, kernel) if width > 1.0 else cv2.erode(up, kernel)
        up = np.asarray(grown, np.float32)
    edge = 0.35 + 0.1 * float(rng.random())
    soft = max(0.02, 1.5 / side * 28 / 10)
    solid: Float = np.clip((up - edge) / soft + 0.5, 0.0, 1.0).astype(np.float32)
    return solid


def _fit(side: int, h: int, w: int) -> int:
    """At most the square whose 20/28 digit fits the frame: a user frames the whole digit."""
    return min(side, min(h, w) * 28 // 20)


def _place(canvas_hw: tuple[int, int], ink: Float, rng: np.random.Generator) -> Float:
    """The ink square anywhere in the frame (clipped at the edges only by its empty margin)."""
    h, w = canvas_hw
    side = ink.shape[0]
    margin = side // 7  # MNIST's 28x28 box has about 4 empty pixels around its 20x20 digit
    top = int(rng.integers(-margin, max(h - side + margin, -margin) + 1))
    left = int(rng.integers(-margin, max(w - side + margin, -margin) + 1))
    out = np.zeros((h, w), np.float32)
    ys, xs = slice(max(top, 0), min(top + side, h)), slice(max(left, 0), min(left + side, w))
    out[ys, xs] = ink[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]
    return out


def _paper(h: int, w: int, rng: np.random.Generator, lines: bool) -> Float:
    """Tinted paper, with ruled or grid lines most of the time, as RGB in [0, 1]."""
    tint = np.array([rng.uniform(0.86, 1.0), rng.uniform(0.83, 0.98), rng.uniform(0.72, 0.96)])
    paper = np.ones((h, w, 3), np.float32) * tint.astype(np.float32)
    if lines and rng.random() < 0.75:
        colour = (
            np.array([rng.uniform(0.5, 0.75), rng.uniform(0.62, 0.82), rng.uniform(0.8, 0.95)])
            if rng.random() < 0.7
            else np.full(3, rng.uniform(0.55, 0.8))
        )
        spacing = rng.uniform(0.035, 0.09) * h
        thickness = max(1, round(h / 500 * rng.uniform(1.0, 2.5)))
        grid = rng.random() < 0.35
        layer = np.zeros((h, w), np.uint8)
        offset = rng.uniform(0, spacing)
        for y in np.arange(offset, h, spacing):
            cv2.line(layer, (0, int(y)), (w - 1, int(y)), 255, thickness)
        if grid:
            for x in np.arange(rng.uniform(0, spacing), w, spacing):
                cv2.line(layer, (int(x), 0), (int(x), h - 1), 255, thickness)
        alpha = (cv2.GaussianBlur(layer, (3, 3), 0).astype(np.float32) / 255.0)[..., None]
        alpha *= rng.uniform(0.5, 0.9)
        paper = paper * (1 - alpha) + colour.astype(np.float32) * alpha
    return paper


def _lighting(h: int, w: int, rng: np.random.Generator, shadow: tuple[float, float]) -> Float:
    """Light falloff across the page, a vignette, and a soft shadow of a hand or a phone."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs / w + np.sin(angle) * ys / h).astype(np.float32)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    light = 1.0 - rng.uniform(0.0, 0.3) * ramp
    r2 = ((xs / w - 0.5) ** 2 + (ys / h - 0.5) ** 2) * 2
    light *= 1.0 - rng.uniform(0.0, 0.3) * r2
    lo, hi = shadow
    if hi > 0 and rng.random() < 0.8:
        mask = np.zeros((h, w), np.uint8)
        centre = (int(rng.uniform(-0.2, 1.2) * w), int(rng.uniform(-0.2, 1.2) * h))
        axes = (int(rng.uniform(0.3, 0.8) * w), int(rng.uniform(0.2, 0.6) * h))
        cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 255, -1)
        sigma = rng.uniform(0.01, 0.08) * max(h, w)
        soft = np.asarray(cv2.GaussianBlur(mask / 255.0, (0, 0), sigma), np.float32)
        light *= 1.0 - rng.uniform(lo, hi) * soft
    lit: Float = light.astype(np.float32)
    return lit


def _camera(img: Float, rng: np.random.Generator, tilt: float, keystone: float) -> Float:
    """Keystone and tilt of a hand-held phone, as one perspective warp."""
    h, w = img.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    jitter = rng.uniform(-keystone, keystone, (4, 2)) * np.array([w, h], np.float32)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-tilt, tilt), 1.0)
    dst = cv2.transform((src + jitter)[None], rot)[0].astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(
        img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    return warped.astype(np.float32)


def _encode_jpeg(rgb: Float, quality: int) -> bytes:
    bgr = cv2.cvtColor(np.clip(rgb * 255.0, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _encode_png(rgb: Float) -> bytes:
    bgr = cv2.cvtColor(np.clip(rgb * 255.0, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    return buf.tobytes()


def _frame(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    long_side = int(rng.integers(lo, hi + 1))
    ratio = rng.choice([1.0, 0.75, 4 / 3, 0.5625])
    if ratio <= 1:
        return long_side, int(long_side * ratio)
    return int(long_side / ratio), long_side


def photo(digit: NDArray[np.uint8], rng: np.random.Generator) -> tuple[bytes, bool]:
    h, w = _frame(rng, 320, 1024)
    side = _fit(int(rng.uniform(0.15, 0.6) * h * 28 / 20), h, w)
    ink = _place((h, w), pen_ink(digit, side, rng, rng.uniform(0.6, 2.0)), rng)
    pen = [
        np.array([rng.uniform(0.02, 0.2)] * 3),
        np.array([rng.uniform(0.05, 0.2), rng.uniform(0.1, 0.25), rng.uniform(0.4, 0.7)]),
        np.array([rng.uniform(0.4, 0.6), rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.2)]),
    ]
    colour = pen[int(rng.choice(3, p=[0.55, 0.35, 0.1]))].astype(np.float32)
    alpha = (ink * rng.uniform(0.8, 1.0))[..., None]
    img = _paper(h, w, rng, lines=True) * (1 - alpha) + colour * alpha
    img *= _lighting(h, w, rng, (0.15, 0.45))[..., None]
    img = _camera(img, rng, tilt=8.0, keystone=0.06)
    img += rng.normal(0, rng.uniform(0.005, 0.02), img.shape).astype(np.float32)
    return _encode_jpeg(img, int(rng.integers(55, 91))), False


def pencil(digit: NDArray[np.uint8], rng: np.random.Generator) -> tuple[bytes, bool]:
    h, w = _frame(rng, 320, 900)
    side = _fit(int(rng.uniform(0.2, 0.6) * h * 28 / 20), h, w)
    ink = pen_ink(digit, side, rng, rng.uniform(0.5, 1.3))
    grain = cv2.GaussianBlur(rng.random(ink.shape).astype(np.float32), (0, 0), 0.8)
    ink *= 0.55 + 0.9 * (grain - grain.mean())
    ink = _place((h, w), np.clip(ink, 0, 1), rng)
    # A stray mark away from the digit: a short pen tick or a dot.
    mark = np.zeros((h, w), np.uint8)
    rows, cols = np.nonzero(ink > 0.2)
    for _ in range(20):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        if rows.size == 0 or np.hypot(rows - y, cols - x).min() > 0.15 * h:
            length = rng.uniform(0.02, 0.07) * h
            a = rng.uniform(0, np.pi)
            end = (int(x + length * np.cos(a)), int(y + length * np.sin(a)))
            cv2.line(mark, (x, y), end, 255, max(1, round(h / 250)))
            break
    ink = np.maximum(ink, mark.astype(np.float32) / 255.0 * rng.uniform(0.5, 0.9))
    grey = np.float32(rng.uniform(0.25, 0.45))
    alpha = (ink * rng.uniform(0.45, 0.75))[..., None]
    img = _paper(h, w, rng, lines=rng.random() < 0.5) * (1 - alpha) + grey * alpha
    img *= _lighting(h, w, rng, (0.3, 0.6))[..., None]
    img = _camera(img, rng, tilt=6.0, keystone=0.04)
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.4) * h / 500), np.float32)
    img += rng.normal(0, rng.uniform(0.01, 0.025), img.shape).astype(np.float32)
    return _encode_jpeg(img, int(rng.integers(40, 61))), False


def screenshot(digit: NDArray[np.uint8], rng: np.random.Generator) -> tuple[bytes, bool]:
    h, w = _frame(rng, 200, 600)
    side = _fit(int(rng.uniform(0.4, 0.9) * h * 28 / 20), h, w)
    ink = _place((h, w), pen_ink(digit, side, rng, rng.uniform(1.0, 3.0)), rng)[..., None]
    dark_mode = bool(rng.random() < 0.5)
    if dark_mode:  # light strokes on a dark canvas
        paper = np.full(3, rng.uniform(0.05, 0.2), np.float32)
        colour = rng.uniform(0.75, 1.0, 3).astype(np.float32)
    else:
        paper = np.full(3, rng.uniform(0.93, 1.0), np.float32)
        colour = (rng.uniform(0.0, 0.5, 3) if rng.random() < 0.4 else np.zeros(3)).astype(
            np.float32
        )
    img = np.ones((h, w, 3), np.float32) * paper * (1 - ink) + colour * ink
    return _encode_png(img), dark_mode


def tight(digit: NDArray[np.uint8], rng: np.random.Generator) -> tuple[bytes, bool]:
    rows, cols = np.nonzero(digit > 40)
    crop = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    ch, cw = crop.shape
    scan_w = max(6, round(16 * cw / ch))
    scan = cv2.resize(crop, (scan_w, 16), interpolation=cv2.INTER_AREA)
    scale = rng.uniform(3.0, 10.0)
    size = (round(scan_w * scale), round(16 * scale))
    up = np.asarray(cv2.resize(scan, size, interpolation=cv2.INTER_CUBIC))
    img = np.clip(up.astype(np.float32) / 255.0, 0, 1)
    scanned = bool(rng.random() < 0.6)
    if scanned:
        img = 1.0 - img  # dark ink on white
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return _encode_png(np.repeat(img[..., None], 3, axis=2)), not scanned


RENDER = {"photo": photo, "pencil": pencil, "screenshot": screenshot, "tight": tight}


def sources(data: Path) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """MNIST test and hwd1000 digits, light on dark, 28x28 (never MNIST training digits)."""
    from PIL import Image

    from train.data import read_raw

    images, labels = read_raw(data / "mnist", "test")
    files = sorted((data / "hwd1000" / "img").glob("*.png"))
    hwd = [255 - np.asarray(Image.open(f).convert("L"), dtype=np.uint8) for f in files]
    both = np.concatenate([images, np.stack(hwd)])
    return both, np.concatenate([labels, [int(f.name[0]) for f in files]]).astype(np.int64)


def render(
    style: Style,
    digits: NDArray[np.uint8],
    labels: NDArray[np.int64],
    n: int,
    seed: int = 0,
) -> Iterator[Upload]:
    """n uploads of one style from digits the seed picks: the same seed, the same files."""
    rng = np.random.default_rng([seed, STYLES.index(style)])
    picks = rng.choice(len(labels), size=n, replace=False)
    for index in picks:
        data, light_ink = RENDER[style](digits[index], rng)
        ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        yield Upload(data, int(labels[index]), style, ext, light_ink)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m train.wild", description=__doc__)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("artifacts/wild"))
    p.add_argument("--n", type=int, default=200, help="uploads per style")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    digits, labels = sources(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "style"])
        for style in STYLES:
            for i, upload in enumerate(render(style, digits, labels, args.n, args.seed)):
                name = f"{style}-{i:04d}-{upload.label}.{upload.ext}"
                (args.out / name).write_bytes(upload.data)
                writer.writerow([name, upload.label, style])
    print(f"wrote {args.n * len(STYLES)} uploads to {args.out}")


if __name__ == "__main__":
    main()
