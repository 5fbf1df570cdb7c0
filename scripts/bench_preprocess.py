"""Preprocessing speed on this machine: a 1024x1024 photo-like JPEG and a 28x28 PNG.

Targets (the brief): under 20 ms and under 2 ms. Prints medians; asserts nothing.
"""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from handai.preprocess import preprocess


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
    img = Image.new("L", (28, 28), 255)
    ImageDraw.Draw(img).line([(8, 6), (20, 6), (12, 22)], fill=0, width=3)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def median_ms(data: bytes, runs: int) -> float:
    preprocess(data)  # warm caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        preprocess(data)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    jpeg, png = photo_jpeg(), small_png()
    print(f"1024x1024 JPEG ({len(jpeg) // 1024} kB): {median_ms(jpeg, 50):.2f} ms median (<20)")
    print(f"28x28 PNG ({len(png)} B): {median_ms(png, 500):.3f} ms median (<2)")


if __name__ == "__main__":
    main()
