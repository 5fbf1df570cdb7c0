"""The seeded renderer of real-world uploads (train.wild) and the evaluation that uses it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from handai import registry
from handai.backends import TorchForward
from handai.inference import Engine
from tests.images import DATA
from train import wild
from train.evaluate import evaluate


@pytest.fixture(scope="module")
def sources() -> tuple[np.ndarray, np.ndarray]:
    return wild.sources(DATA)


def test_sources_are_mnist_test_and_hwd1000(sources: tuple[np.ndarray, np.ndarray]) -> None:
    digits, labels = sources
    assert digits.shape == (11000, 28, 28) and len(labels) == 11000
    assert digits[:, 0, 0].mean() < 10  # light ink on dark, like MNIST, for both sets


def test_a_faint_source_digit_is_written_in_solid_strokes(
    sources: tuple[np.ndarray, np.ndarray],
) -> None:
    """hwd1000 has digits whose darkest pixel is 150 of 255: the pen writes them as solid as
    black ones, not as the dots and dashes that thresholding their grey left (a 4 read as
    a speck, dropped from its number)."""
    digits, labels = sources
    faint = int(np.argmin(digits[10000:].reshape(1000, -1).max(axis=1))) + 10000
    assert digits[faint].max() < 160
    black = (digits[faint] * (255.0 / digits[faint].max())).round().astype(np.uint8)
    written, as_black = (
        wild.pen_ink(d, 112, np.random.default_rng(0), 1.0) for d in (digits[faint], black)
    )
    assert np.abs(written - as_black).mean() < 0.01
    # One stroke, or two for a 4 written in two: not a trail of pieces.
    pieces = ndimage.label(written > 0.5, structure=np.ones((3, 3)))[1]
    assert pieces <= 2, (labels[faint], pieces)


def test_the_same_seed_renders_the_same_files(sources: tuple[np.ndarray, np.ndarray]) -> None:
    for style in wild.STYLES:
        first = [u.data for u in wild.render(style, *sources, n=3, seed=5)]
        again = [u.data for u in wild.render(style, *sources, n=3, seed=5)]
        other = [u.data for u in wild.render(style, *sources, n=3, seed=6)]
        assert first == again and first != other


@pytest.mark.parametrize("style", wild.STYLES)
def test_each_style_looks_like_what_users_send(
    sources: tuple[np.ndarray, np.ndarray], style: wild.Style
) -> None:
    for upload in wild.render(style, *sources, n=8, seed=1):
        img = Image.open(io.BytesIO(upload.data))
        gray = np.asarray(img.convert("L"), dtype=np.float32)
        if style in ("photo", "pencil"):
            assert img.format == "JPEG" and 320 <= max(img.size) <= 1024
            assert not upload.light_ink
            assert np.ptp(gray) > 40  # lighting varies across the page
        elif style == "screenshot":
            assert img.format == "PNG" and 200 <= max(img.size) <= 600
            assert upload.light_ink == (np.median(gray) < 128)
        else:  # tight: ink on all four edges
            ink = gray < 215 if not upload.light_ink else gray > 40  # any trace of ink
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()


def test_evaluation_counts_refusals_as_not_read(
    sources: tuple[np.ndarray, np.ndarray],
) -> None:
    seed = registry.load(registry.SEED_DIR, registry.list_manifests(registry.SEED_DIR)[0].model_id)
    engine = Engine(TorchForward(seed.module), seed.manifest.temperature, 0.85)
    uploads = list(wild.render("photo", *sources, n=4, seed=2))
    blank = io.BytesIO()
    Image.new("L", (300, 300), 240).save(blank, "PNG")
    blobs = [u.data for u in uploads] + [blank.getvalue()]
    labels = np.array([u.label for u in uploads] + [0])
    result = evaluate(engine, blobs, labels, tta=False)
    assert result["n"] == 5 and result["refused"] == pytest.approx(0.2)
    assert result["accuracy"] <= 0.8
