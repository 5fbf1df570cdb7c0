"""Evaluate a model through the real read path: image bytes -> preprocess -> engine.

    python -m train.evaluate --model seed/<model_id> --data ../shared/data [--json out.json]

Prints accuracy, ECE (15 bins), the uncertain rate and the confusion matrix, with TTA off
and on, for the MNIST test set (each digit encoded as a PNG, as the bot would send it) and
for hwd1000.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from handai import registry
from handai.inference import Engine, bf16_faster
from handai.preprocess import preprocess
from train.data import read_raw
from train.temperature import ece

BATCH = 256


def mnist_test(data: Path) -> tuple[list[bytes], NDArray[np.int64]]:
    images, labels = read_raw(data / "mnist", "test")
    encoded = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    return encoded, labels


def hwd1000(data: Path) -> tuple[list[bytes], NDArray[np.int64]]:
    files = sorted((data / "hwd1000" / "img").glob("*.png"))
    return [f.read_bytes() for f in files], np.array([int(f.name[0]) for f in files])


def evaluate(
    engine: Engine, blobs: list[bytes], labels: NDArray[np.int64], tta: bool
) -> dict[str, Any]:
    pixels = np.concatenate([preprocess(b).pixels for b in blobs])
    probs = []
    for start in range(0, len(blobs), BATCH):
        chunk = pixels[start : start + BATCH]
        probs.append(engine.probabilities(torch.from_numpy(chunk), [tta] * len(chunk)))
    p = torch.cat(probs)
    y = torch.from_numpy(labels)
    predicted = p.argmax(1)
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((y, predicted), torch.ones_like(y), accumulate=True)
    wrong = (predicted != y).nonzero().flatten().tolist()
    return {
        "misread": [(i, int(y[i]), int(predicted[i]), float(p[i].max())) for i in wrong],
        "n": len(labels),
        "accuracy": float((predicted == y).float().mean()),
        "ece": ece(p, y),
        "uncertain_rate": float((p.max(1).values < engine.uncertain_threshold).float().mean()),
        "errors": int((predicted != y).sum()),
        "confusion": confusion.tolist(),
    }


def save_examples(blobs: list[bytes], misread: list[Any], path: Path, n: int = 12) -> None:
    """Misread uploads side by side with what the model saw, scaled up 3x."""
    tiles = []
    for index, _, _, _ in misread[:n]:
        upload = Image.open(io.BytesIO(blobs[index])).convert("L").resize((28, 28))
        seen = Image.fromarray(255 - preprocess(blobs[index]).preview)
        tiles.append(
            np.concatenate(
                [np.asarray(upload), np.full((28, 2), 128, np.uint8), np.asarray(seen)], axis=1
            )
        )
    if tiles:
        grid = np.concatenate([np.pad(t, ((2, 2), (2, 2)), constant_values=128) for t in tiles])
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3)).save(path)


def report(name: str, result: dict[str, Any]) -> str:
    lines = [
        f"{name}: accuracy {result['accuracy']:.2%} ({result['errors']} wrong of {result['n']}), "
        f"ECE {result['ece']:.3%}, uncertain {result['uncertain_rate']:.2%}",
        "  true\\pred " + " ".join(f"{d:>5}" for d in range(10)),
    ]
    for digit, row in enumerate(result["confusion"]):
        lines.append(f"  {digit:>9} " + " ".join(f"{v:>5}" for v in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a model folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--examples", type=Path, help="a PNG of misread hwd1000 digits")
    args = parser.parse_args(argv)
    loaded = registry.load(args.model.parent, args.model.name)
    engine = Engine(
        loaded.module, loaded.manifest.temperature, args.threshold, bf16_faster(loaded.module)
    )
    results: dict[str, Any] = {"model_id": loaded.manifest.model_id}
    for set_name, (blobs, labels) in (
        ("mnist_test", mnist_test(args.data)),
        ("hwd1000", hwd1000(args.data)),
    ):
        for tta in (False, True):
            key = f"{set_name}_tta_{'on' if tta else 'off'}"
            start = time.perf_counter()
            results[key] = evaluate(engine, blobs, labels, tta)
            results[key]["seconds"] = time.perf_counter() - start
            print(report(key, results[key]), flush=True)
    if args.examples:
        blobs, _ = hwd1000(args.data)
        save_examples(blobs, results["hwd1000_tta_off"]["misread"], args.examples)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
