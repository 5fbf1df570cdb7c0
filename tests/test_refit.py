"""Refitting the temperature on validation digits, clean and as rendered uploads."""

import json
from pathlib import Path

import torch

from handai import registry
from tests.images import MNIST
from train import refit
from train.data import load_split, train_val
from train.temperature import fit_temperature
from train.trainer import logits_of

SEED = Path(__file__).resolve().parents[1] / "seed"


def shipped() -> registry.LoadedModel:
    return registry.load(SEED, registry.list_manifests(SEED)[0].model_id)  # the newest


def test_the_fit_covers_the_validation_digits_and_their_renders(tmp_path: Path) -> None:
    model = shipped().module
    full = load_split(MNIST, "test", tmp_path, limit=500)  # a small stand-in for train
    clean_only = refit.fit_on_validation(model, full, 0, tmp_path, wild_renders=0)
    assert (clean_only.clean, clean_only.rendered) == (100, 0)
    both = refit.fit_on_validation(model, full, 0, tmp_path, wild_renders=3)
    assert both.clean == 100 and 10 <= both.rendered <= 12  # 3 per style, a refusal left out
    assert both.val_acc == clean_only.val_acc  # accuracy is still the clean split's
    _, val = train_val(full, 0)
    logits = logits_of(model, val.images)
    assert clean_only.temperature == fit_temperature(logits, torch.from_numpy(val.labels))
    assert 0.05 <= both.temperature <= 20.0


def test_a_refit_is_a_new_model_with_the_same_weights(tmp_path: Path) -> None:
    old = shipped()
    folder = SEED / old.manifest.model_id
    before = (folder / "manifest.json").read_text()
    args = f"--model-id refit-test --wild-renders 0 --data-root {MNIST} --model {folder}"
    out = ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path), "--train-limit", "2000"]
    assert refit.main([*args.split(), *out]) == 0
    new = registry.load(tmp_path / "out", "refit-test")
    assert new.sha256 == old.sha256  # the same weights ...
    written = json.loads((tmp_path / "out" / "refit-test" / "manifest.json").read_text())
    assert written["refit_from"] == old.manifest.model_id  # ... under a new id
    # A quick refit (as a quick job): the validation fifth of 2,000 digits, 2,000 test digits.
    assert written["temperature_fitted_on"] == {"validation_digits": 400, "rendered_uploads": 0}
    assert written["test_images"] == 2000 and written["test_acc"] > 0.98
    assert 0 < written["ece"] < 0.05
    assert (folder / "manifest.json").read_text() == before  # the old folder left as it is
