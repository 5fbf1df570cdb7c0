"""Write handai/int8_sample.npz: the images handai.int8 calibrates and checks int8 copies on.

1,000 MNIST *training* digits (never the test set the served answers are judged on), drawn
with a fixed seed and put through the serving preprocessing, stored as the 28x28 ink the model
sees (uint8) with their indices into the training split.

    python -m train.int8_sample --data ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from handai.int8 import SAMPLE
from train.data import preprocess_mnist, read_raw

SIZE = 1000
SEED = 8


def build(data: Path) -> tuple[np.ndarray, np.ndarray]:
    images, _ = read_raw(data / "mnist", "train")
    indices = np.sort(np.random.default_rng(SEED).choice(len(images), SIZE, replace=False))
    # Shuffled again so the calibration part and the check part are both spread over digits.
    indices = np.random.default_rng(SEED).permutation(indices)
    return indices, preprocess_mnist(images[indices])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=SAMPLE)
    args = parser.parse_args(argv)
    indices, images = build(args.data)
    np.savez_compressed(args.out, indices=indices, images=images)
    print(f"wrote {args.out}: {len(images)} images")


if __name__ == "__main__":
    main()
