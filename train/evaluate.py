"""Evaluate a model through the real read path: image bytes -> preprocess -> engine.

    python -m train.evaluate --model seed/<model_id> --data ../shared/data [--json out.json]

Prints accuracy, ECE (15 bins), the uncertain rate and the confusion matrix, with TTA off
and on, for the MNIST test set (each digit encoded as a PNG, as the bot would send it), for
hwd1000, and for uploads rendered by train.wild from both (photos, pencil under shadows,
screenshots, tight crops), where it also counts refusals and confident mistakes; and whole
numbers rendered by train.numbers (clean and photographed), read exactly or not.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from handai import registry
from handai.backends import plan
from handai.config import Backend
from handai.errors import HandaiError
from handai.inference import Engine
from handai.numbers import choose, flatten, segment
from handai.preprocess import preprocess
from train import numbers, wild
from train.data import DataError, read_raw
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
    """Accuracy counts a refused upload (preprocessing_failed and the like) as not read."""
    kept, pixels, refused = [], [], []
    for index, blob in enumerate(blobs):
        try:
            pixels.append(preprocess(blob).pixels)
            kept.append(index)
        except HandaiError:
            refused.append(index)
    probs = [
        engine.probabilities(
            torch.from_numpy(np.concatenate(pixels[start : start + BATCH])),
            [tta] * len(pixels[start : start + BATCH]),
        )
        for start in range(0, len(pixels), BATCH)
    ]
    p = torch.cat(probs) if probs else torch.zeros(0, 10)
    y = torch.from_numpy(labels[kept])
    predicted = p.argmax(1)
    confidence = p.max(1).values
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((y, predicted), torch.ones_like(y), accumulate=True)
    wrong = (predicted != y).nonzero().flatten().tolist()
    sure = confidence >= engine.uncertain_threshold
    n = len(blobs)
    return {
        "misread": [(kept[i], int(y[i]), int(predicted[i]), float(confidence[i])) for i in wrong],
        "n": n,
        "accuracy": float((predicted == y).sum()) / n,
        "refused": len(refused) / n,
        "confidently_wrong": float(((predicted != y) & sure).sum()) / n,
        "ece": ece(p, y) if len(kept) else 0.0,
        "uncertain_rate": float((~sure).float().mean()) if len(kept) else 0.0,
        "errors": len(wrong) + len(refused),
        "confusion": confusion.tolist(),
    }


def save_examples(blobs: list[bytes], misread: list[Any], path: Path, n: int = 12) -> None:
    """Misread uploads (left) beside what the model saw (right), in rows of three."""
    tiles = []
    for index, _, _, _ in misread[:n]:
        upload = Image.open(io.BytesIO(blobs[index])).convert("L").resize((56, 56))
        seen = Image.fromarray(255 - preprocess(blobs[index]).preview).resize((56, 56))
        pair = np.concatenate(
            [np.asarray(upload), np.full((56, 2), 128, np.uint8), np.asarray(seen)], axis=1
        )
        tiles.append(np.pad(pair, ((3, 3), (3, 3)), constant_values=128))
    if not tiles:
        return
    tiles += [np.full_like(tiles[0], 128)] * (-len(tiles) % 3)
    rows = [np.concatenate(tiles[i : i + 3], axis=1) for i in range(0, len(tiles), 3)]
    grid = np.concatenate(rows)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2)).save(path)


def report(name: str, result: dict[str, Any]) -> str:
    lines = [
        f"{name}: accuracy {result['accuracy']:.2%} ({result['errors']} not read of "
        f"{result['n']}), refused {result['refused']:.2%}, confidently wrong "
        f"{result['confidently_wrong']:.2%}, ECE {result['ece']:.3%}, "
        f"uncertain {result['uncertain_rate']:.2%}",
        "  true\\pred " + " ".join(f"{d:>5}" for d in range(10)),
    ]
    for digit, row in enumerate(result["confusion"]):
        lines.append(f"  {digit:>9} " + " ".join(f"{v:>5}" for v in row))
    return "\n".join(lines)


def read_number(engine: Engine, data: bytes) -> str:
    """A whole number as /v1/read/number reads it (TTA off), without the service's hops."""
    slots = segment(data)
    cuts = flatten(slots)
    pixels = np.concatenate([c.image.pixels for c in cuts])
    answers = engine.predict(pixels, [False] * len(cuts), [c.image.prior for c in cuts])
    read = choose(slots, answers, lambda p: p.confidence)
    return "".join(str(p.digit) for _, p in read)


def evaluate_numbers(engine: Engine, uploads: list[numbers.NumberUpload]) -> dict[str, Any]:
    """Whole numbers through /v1/read/number's path: exact matches, refusals, examples."""
    exact, refused, wrong = 0, 0, []
    for upload in uploads:
        try:
            got = read_number(engine, upload.data)
        except HandaiError:
            refused += 1
            continue
        if got == upload.number:
            exact += 1
        else:
            wrong.append((upload.number, got, upload.touching))
    n = len(uploads)
    share = exact / n
    return {
        "n": n,
        "exact": share,
        # 95 % interval (normal approximation): 300 numbers leave a 97 % target +-1.9 points.
        "exact_margin": 1.96 * math.sqrt(share * (1 - share) / n),
        "refused": refused / n,
        "with_touching_pair": sum(u.touching for u in uploads) / n,
        "misread": wrong[:20],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a model folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--examples", type=Path, help="a folder for PNGs of misread uploads")
    parser.add_argument("--wild", type=int, default=500, help="rendered uploads per style")
    parser.add_argument(
        "--numbers", type=int, default=2000, help="rendered numbers per style (40-75 ms each)"
    )
    parser.add_argument(
        "--backend",
        choices=get_args(Backend),
        default="auto",
        help="what runs the forward pass; auto: the fastest here, as the service picks it",
    )
    args = parser.parse_args(argv)
    try:  # the same files train.wild and train.numbers render from below
        sets = {"mnist_test": mnist_test(args.data), "hwd1000": hwd1000(args.data)}
    except DataError as e:
        parser.error(str(e))
    try:
        loaded = registry.load(args.model.parent, args.model.name)
    except HandaiError as e:  # no such model, or a file that does not load
        parser.error(f"--model {args.model}: {e.message}")
    forward = plan(loaded.module, loaded.sha256, loaded.manifest.arch, args.backend)
    engine = Engine(forward, loaded.manifest.temperature, args.threshold)
    results: dict[str, Any] = {"model_id": loaded.manifest.model_id, "forward": forward.name}
    if args.wild:
        digits, labels = wild.sources(args.data)
        for style in wild.STYLES:
            uploads = list(wild.render(style, digits, labels, args.wild))
            sets[f"wild_{style}"] = (
                [u.data for u in uploads],
                np.array([u.label for u in uploads]),
            )
    for set_name, (blobs, labels) in sets.items():
        for tta in (False, True):
            key = f"{set_name}_tta_{'on' if tta else 'off'}"
            start = time.perf_counter()
            results[key] = evaluate(engine, blobs, labels, tta)
            results[key]["seconds"] = time.perf_counter() - start
            print(report(key, results[key]), flush=True)
    if args.numbers:
        digits, labels = wild.sources(args.data)
        for row_style in numbers.STYLES:
            rows = list(numbers.render(row_style, digits, labels, args.numbers))
            key = f"numbers_{row_style}"
            results[key] = evaluate_numbers(engine, rows)
            print(
                f"{key}: {results[key]['exact']:.2%} (+-{results[key]['exact_margin']:.2%}) "
                f"read exactly of {len(rows)} "
                f"(2-6 digits, {results[key]['with_touching_pair']:.0%} with a touching pair), "
                f"refused {results[key]['refused']:.2%}",
                flush=True,
            )
    if args.examples:
        args.examples.mkdir(parents=True, exist_ok=True)
        for set_name, (blobs, _) in sets.items():
            misread = results[f"{set_name}_tta_off"]["misread"]
            save_examples(blobs, misread, args.examples / f"{set_name}-misread.png")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
