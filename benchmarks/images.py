"""The two uploads every benchmark uses (a 28x28 PNG and a 1024x1024 photo-like JPEG), and a
hostile whole-number upload."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_jpeg(side: int = 1024) -> bytes:
    """A digit drawn on uneven, noisy paper, saved the way a phone would."""
    rng = np.random.default_rng(0)
    xx = np.mgrid[0:side, 0:side][1]
    paper = 200 + 30 * np.sin(xx / side * 3) + rng.normal(0, 6, (side, side))
    img = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    s = side / 200
    draw.line([(60 * s, 40 * s), (140 * s, 40 * s), (90 * s, 170 * s)], fill=30, width=int(9 * s))
    img = img.filter(ImageFilter.GaussianBlur(2)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def small_png() -> bytes:
    """A dark 7 on white paper at MNIST's size."""
    img = Image.new("L", (28, 28), 255)
    ImageDraw.Draw(img).line([(8, 6), (20, 6), (12, 22)], fill=0, width=3)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def scribbles_png(n: int) -> bytes:
    """n wide wavy strokes in a row: each a piece of ink the shapes may read as several digits,
    so a whole-number read of it costs as much as any upload can."""
    img = np.full((80, 1024), 255, np.uint8)
    for k in range(n):
        x0 = 5 + k * max(85, 1000 // n)
        points = [(x0 + 3 * i, round(40 + 25 * np.sin(i))) for i in range(26)]
        cv2.polylines(img, [np.array(points, np.int32)], False, 0, 6, cv2.LINE_AA)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# name -> (label, content type, maker)
UPLOADS = {
    "png28": ("28x28 PNG", "image/png", small_png),
    "jpeg1024": ("1024x1024 JPEG", "image/jpeg", photo_jpeg),
}
