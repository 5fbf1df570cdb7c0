"""Behaviour of the shipped model through the real read path (bytes -> preprocess -> engine)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handai import registry
from handai.backends import Forward, TorchForward, candidates
from handai.errors import HandaiError
from handai.inference import Engine
from handai.preprocess import preprocess
from tests.images import encode, hwd_digit, hwd_files, on_paper, tight_crop


@pytest.fixture(scope="module")
def seed() -> registry.LoadedModel:
    manifests = registry.list_manifests(registry.SEED_DIR)
    assert manifests, "seed/ must hold the shipped model"
    return registry.load(registry.SEED_DIR, manifests[0].model_id)


def engine_for(seed: registry.LoadedModel, forward: Forward | None = None) -> Engine:
    return Engine(forward or TorchForward(seed.module), seed.manifest.temperature, 0.85)


def read_all(engine: Engine, blobs: list[bytes], tta: bool) -> list[int]:
    pixels = np.concatenate([preprocess(b).pixels for b in blobs])
    return [p.digit for p in engine.predict(pixels, [tta] * len(blobs))]


def test_manifest_carries_training_figures(seed: registry.LoadedModel) -> None:
    extra = seed.manifest.model_dump()
    assert extra["test_acc"] >= 0.996
    assert seed.manifest.val_acc >= 0.99


def test_reads_hand_drawn_digits(seed: registry.LoadedModel) -> None:
    files = hwd_files()[::5]
    digits = read_all(engine_for(seed), [f.read_bytes() for f in files], tta=False)
    labels = [int(f.name[0]) for f in files]
    accuracy = float(np.mean(np.array(digits) == np.array(labels)))
    assert accuracy >= 0.95, accuracy


def test_every_backend_gives_the_digits_of_fp32_torch(seed: registry.LoadedModel) -> None:
    """Whichever forward the service picks on a machine (torch or OpenVINO, fp32 or bf16)."""
    blobs = [f.read_bytes() for f in hwd_files()[::10]]
    forwards = candidates(seed.module, seed.sha256, "auto", threads=2)
    assert {"torch-fp32", "openvino-f32"} <= set(forwards)  # OpenVINO installs with the project
    reference = read_all(engine_for(seed), blobs, tta=True)
    for name, forward in forwards.items():
        assert read_all(engine_for(seed, forward), blobs, tta=True) == reference, name


def test_shifted_and_scaled_digit_keeps_its_label(seed: registry.LoadedModel) -> None:
    engine = engine_for(seed)
    for path in hwd_files()[::50]:
        digit = Image.open(path).convert("L")
        expected = read_all(engine, [path.read_bytes()], tta=False)[0]
        for side, fx, fy in ((120, 0.1, 0.9), (300, 0.8, 0.05), (64, 0.5, 0.5)):
            canvas = Image.new("L", (side, side), 255)
            small = side // 2  # the digit at half the canvas, anywhere on it
            canvas.paste(digit.resize((small, small)), (int(fx * small), int(fy * small)))
            assert read_all(engine, [encode(canvas)], tta=False)[0] == expected, path.name


def test_inverted_upload_reads_the_same(seed: registry.LoadedModel) -> None:
    engine = engine_for(seed)
    for path in hwd_files()[::100]:
        gray = np.asarray(Image.open(path).convert("L"))
        normal = read_all(engine, [encode(Image.fromarray(gray))], tta=False)
        inverted = read_all(engine, [encode(Image.fromarray(255 - gray))], tta=False)
        assert normal == inverted


def test_temperature_is_calibrated_not_default(seed: registry.LoadedModel) -> None:
    assert seed.manifest.temperature != 1.0
    assert torch.isfinite(torch.tensor(seed.manifest.temperature))


@pytest.mark.parametrize("path", hwd_files()[5::100], ids=lambda p: p.name)
def test_the_same_digit_reads_the_same_however_it_is_photographed(
    seed: registry.LoadedModel, path: Path
) -> None:
    """One digit, four uploads: clean, half in a strong shadow, on ruled paper, tight crop."""
    digit = hwd_digit(path)
    uploads = {
        "clean": on_paper(digit),
        "shadow": on_paper(digit, shadow=0.55),
        "ruled": on_paper(digit, lines=True),
        "tight": tight_crop(digit),
    }
    reads = dict(
        zip(uploads, read_all(engine_for(seed), list(uploads.values()), False), strict=True)
    )
    assert set(reads.values()) == {int(path.name[0])}, reads


def keyboard() -> bytes:
    keys = np.full((300, 400), 200, np.uint8)
    for y in range(20, 280, 60):
        for x in range(20, 380, 60):
            keys[y : y + 45, x : x + 45] = 60
            keys[y + 15 : y + 25, x + 18 : x + 24] = 230
    return encode(Image.fromarray(keys), "JPEG")


@pytest.mark.parametrize(
    "upload",
    [
        lambda: on_paper(np.zeros((28, 28), np.uint8), lines=True),
        lambda: on_paper(np.zeros((28, 28), np.uint8), lines=True, shadow=0.5),
        lambda: encode(
            Image.fromarray((np.random.default_rng(0).random((300, 300)) * 255).astype(np.uint8)),
            "JPEG",
        ),
        keyboard,
    ],
    ids=["ruled-page", "ruled-page-in-shadow", "noise", "keyboard"],
)
def test_no_digit_is_never_a_confident_answer(
    seed: registry.LoadedModel, upload: Callable[[], bytes]
) -> None:
    try:
        pixels = preprocess(upload()).pixels
    except HandaiError as err:
        assert err.code == "preprocessing_failed"
        return
    answer = engine_for(seed).predict(pixels, [False])[0]
    assert answer.uncertain, answer
