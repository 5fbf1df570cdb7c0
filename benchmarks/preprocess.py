"""Preprocessing speed on this machine: a 1024x1024 photo-like JPEG and a 28x28 PNG.

Targets (the brief): under 20 ms and under 2 ms. Prints medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.images import photo_jpeg, small_png
from handai.preprocess import preprocess


def median_ms(data: bytes, runs: int) -> float:
    preprocess(data)  # warm caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        preprocess(data)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    jpeg, png = photo_jpeg(), small_png()
    result = {
        "jpeg1024_ms": round(median_ms(jpeg, 50), 2),
        "png28_ms": round(median_ms(png, 500), 3),
    }
    print(f"1024x1024 JPEG ({len(jpeg) // 1024} kB): {result['jpeg1024_ms']} ms median (<20)")
    print(f"28x28 PNG ({len(png)} B): {result['png28_ms']} ms median (<2)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
