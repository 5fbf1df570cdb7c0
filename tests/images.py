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


def png(img: NDArray[np.uint8]) -> bytes:
    return encode(Image.fromarray(img))


def hwd_tile(digit: str, k: int = 3) -> NDArray[np.uint8]:
    """The k-th hwd1000 drawing of a digit, dark ink on white, 28x28."""
    return np.asarray(Image.open(sorted(HWD.glob(f"{digit}-*.png"))[k]).convert("L"))


def digit_row(tiles: list[NDArray[np.uint8]], gap: int = 6, scale: int = 1) -> NDArray[np.uint8]:
    """Tiles side by side on white with a 10-px margin (a negative gap overlaps them, darkest
    ink wins): a number as drawn."""
    h = tiles[0].shape[0]
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1) + 20
    out = np.full((h + 20, width), 255, np.uint8)
    x = 10
    for t in tiles:
        region = out[10 : 10 + h, x : x + t.shape[1]]
        np.minimum(region, t, out=region)
        x += t.shape[1] + gap
    if scale > 1:
        out = np.asarray(Image.fromarray(out).resize((out.shape[1] * scale, out.shape[0] * scale)))
    return out


def number_png(digits: str, **kw: int) -> bytes:
    """hwd1000 digits in a row, as a PNG upload."""
    return png(digit_row([hwd_tile(d) for d in digits], **kw))


def hwd_files() -> list[Path]:
    return sorted(HWD.glob("*.png"))


def hwd_digit(path: Path) -> NDArray[np.uint8]:
    """An hwd1000 digit as light ink on dark, the way train.wild takes its sources."""
    return 255 - np.asarray(Image.open(path).convert("L"), dtype=np.uint8)


def on_paper(
    digit: NDArray[np.uint8],
    *,
    side: int = 600,
    shadow: float = 0.0,
    lines: bool = False,
    quality: int = 75,
) -> bytes:
    """A pen digit photographed on white paper: optionally half in a soft shadow that falls
    across it (the light there down by `shadow`), optionally on blue ruled lines."""
    from train.wild import pen_ink

    rng = np.random.default_rng(0)
    ink = np.zeros((side, side), np.float32)
    box = side // 2
    ink[side // 4 : side // 4 + box, side // 4 : side // 4 + box] = pen_ink(digit, box, rng, 1.0)
    paper = np.ones((side, side, 3), np.float32) * np.array([0.97, 0.96, 0.92], np.float32)
    if lines:
        for y in range(side // 20, side, side // 15):
            paper[y : y + 2] = np.array([0.6, 0.7, 0.9], np.float32)
    img = paper * (1 - 0.9 * ink[..., None]) + 0.1 * 0.9 * ink[..., None]
    if shadow:
        xs = np.arange(side, dtype=np.float32)
        edge = 1 / (1 + np.exp(-(xs - side * 0.45) / (side * 0.03)))  # soft, across the digit
        img *= (1 - shadow * edge)[None, :, None]
    pixels = np.clip(img * 255, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=quality)


def tight_crop(digit: NDArray[np.uint8], scale: int = 6) -> bytes:
    """Dark ink on white, cropped to the ink so it touches every edge, scaled up."""
    rows, cols = np.nonzero(digit > 40)
    crop = 255 - digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    img = Image.fromarray(crop).resize((crop.shape[1] * scale, crop.shape[0] * scale))
    return encode(img)


def phone_photo(path: Path) -> Path:
    """What a phone's camera gives: 4032x3024 upright, stored sideways (3024 wide) with the
    EXIF rotation that turns it back; over the service's limits as shipped."""
    photo = Image.open(io.BytesIO(on_paper(hwd_digit(HWD / "7-001.png"), side=3024)))
    wide = Image.new("RGB", (4032, 3024), photo.getpixel((0, 0)))
    wide.paste(photo, (504, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to show
    sideways = wide.transpose(Image.Transpose.ROTATE_90)
    path.write_bytes(encode(sideways, "JPEG", quality=92, exif=exif.tobytes()))
    return path
