"""The temperature a model's confidences are scaled by, fitted on held-out validation digits:
as MNIST gives them and, with `wild_renders`, as uploads rendered from those same digits
(phone photos, pencil, screenshots, tight crops) and read by the serving preprocessing, so the
confidence is calibrated on what users send, not on clean scans alone.

    python -m train.refit --model artifacts/my-digits-1 --model-id my-digits-1c --out artifacts

writes a new model folder: the same weights under a new id with the refitted temperature
(a model's id names what it answers, so the old folder is left as it is).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from handai import registry
from train.data import TEST_SIZE, Split, joined, load_split, load_wild, train_val
from train.temperature import ece, fit_temperature
from train.trainer import logits_of

log = logging.getLogger(__name__)

VAL_RENDERS = 500  # per style, from the validation digits
# What registry.save writes afresh for the new folder.
NEW_FIELDS = frozenset(
    {"schema_version", "model_id", "arch", "n_classes", "version", "created_at"}
    | {"preprocess_hash", "val_acc", "temperature", "sha256", "ece"}
)


@dataclass(frozen=True)
class Fit:
    temperature: float
    val_acc: float  # on the clean validation digits, as before
    ece_before: float  # on everything the temperature was fitted on, at T = 1
    ece_after: float
    clean: int  # validation digits
    rendered: int  # uploads rendered from them that the preprocessing read


def fit_on_validation(
    model: nn.Module, full: Split, seed: int, cache_dir: Path, wild_renders: int
) -> Fit:
    """The temperature that minimizes NLL on the job's validation split, plus (when
    `wild_renders` > 0) up to VAL_RENDERS uploads per style rendered from its digits."""
    _, val = train_val(full, seed)
    clean = logits_of(model, val.images)
    rendered = Split(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))
    if wild_renders:
        rendered = load_wild(val, min(wild_renders, VAL_RENDERS), seed, cache_dir)
    both = joined(val, rendered)
    logits = (
        torch.cat([clean, logits_of(model, rendered.images)]) if len(rendered.labels) else clean
    )
    labels = torch.from_numpy(both.labels)
    temperature = fit_temperature(logits, labels)
    return Fit(
        temperature=temperature,
        val_acc=float((clean.argmax(1) == torch.from_numpy(val.labels)).float().mean()),
        ece_before=ece(torch.softmax(logits, 1), labels),
        ece_after=ece(torch.softmax(logits / temperature, 1), labels),
        clean=len(val.labels),
        rendered=len(rendered.labels),
    )


def test_figures(
    model: nn.Module,
    temperature: float,
    data_root: Path,
    cache_dir: Path,
    limit: int | None = None,
) -> tuple[float, float]:
    """Accuracy and ECE on the MNIST test set (its first `limit` digits): read once, for the
    final figures; nothing chosen depends on them."""
    test = load_split(data_root, "test", cache_dir, limit)
    logits = logits_of(model, test.images)
    labels = torch.from_numpy(test.labels)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return accuracy, ece(torch.softmax(logits / temperature, 1), labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.refit", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a model folder")
    parser.add_argument("--model-id", required=True, help="the id of the refitted model")
    parser.add_argument("--out", type=Path, required=True, help="where <model-id>/ is written")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/cache"))
    parser.add_argument("--wild-renders", type=int, default=VAL_RENDERS)
    parser.add_argument(
        "--train-limit",
        type=int,
        help="a quick refit, as `train.job --train-limit` is: the validation split of the first "
        "N training digits, scored on the first N test digits",
    )
    args = parser.parse_args(argv)
    if args.train_limit is not None and args.train_limit < 100:
        parser.error("--train-limit: at least 100 digits")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    loaded = registry.load(args.model.parent, args.model.name)
    old = loaded.manifest.model_dump()
    full = load_split(args.data_root, "train", args.cache_dir, args.train_limit)
    seed = int(old.get("seed", 0))  # the validation split the model was trained beside
    fit = fit_on_validation(loaded.module, full, seed, args.cache_dir, args.wild_renders)
    kept = {k: v for k, v in old.items() if k not in NEW_FIELDS}
    test_images = min(args.train_limit or TEST_SIZE, TEST_SIZE)
    test_acc, test_ece = test_figures(
        loaded.module, fit.temperature, args.data_root, args.cache_dir, test_images
    )
    kept.update(
        test_acc=test_acc,
        test_images=test_images,
        ece=test_ece,
        refit_from=loaded.manifest.model_id,
        ece_val_before=fit.ece_before,
        ece_val_after=fit.ece_after,
        temperature_fitted_on={"validation_digits": fit.clean, "rendered_uploads": fit.rendered},
    )
    manifest = registry.save(
        args.out / args.model_id,
        loaded.module,
        model_id=args.model_id,
        val_acc=fit.val_acc,
        temperature=fit.temperature,
        **kept,
    )
    was = {"model_id": manifest.model_id, "previous_temperature": loaded.manifest.temperature}
    print(json.dumps({**was, **asdict(fit)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
