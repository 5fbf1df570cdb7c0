from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handai import inference
from handai.inference import N_VIEWS, Engine, bf16_faster, tta_views
from handai.model import build_model
from handai.preprocess import BACKGROUND

MODEL = build_model().eval()


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    return Engine(build_model(), temperature=1.0, uncertain_threshold=0.85)


def test_tta_has_nine_views_and_the_first_is_the_image() -> None:
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    views = tta_views(x)
    assert views.shape == (2 * N_VIEWS, 1, 28, 28)
    # grid_sample's identity is exact up to float rounding of the sample positions.
    torch.testing.assert_close(views[0], x[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(views[N_VIEWS], x[1], atol=1e-4, rtol=0)


def test_shift_views_fill_with_background_instead_of_wrapping() -> None:
    x = torch.full((1, 1, 28, 28), BACKGROUND)
    x[0, 0, :, -1] = 3.0  # a bright column on the right edge
    views = tta_views(x)
    right = views[1, 0]  # content moved one pixel right
    assert torch.allclose(right[:, 0], torch.full((28,), BACKGROUND), atol=1e-5)
    torch.testing.assert_close(right[:, 1:], x[0, 0, :, :-1], atol=1e-5, rtol=0)


def test_rotation_views_keep_background_in_corners() -> None:
    x = torch.full((1, 1, 28, 28), BACKGROUND)
    views = tta_views(x)
    assert torch.allclose(views, torch.full_like(views, BACKGROUND), atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=6), st.floats(0.3, 5.0))
def test_predictions_are_distributions(flags: list[bool], temperature: float) -> None:
    engine = Engine(MODEL, temperature=temperature, uncertain_threshold=0.85)
    pixels = np.random.default_rng(0).normal(size=(len(flags), 1, 28, 28)).astype(np.float32)
    for p in engine.predict(pixels, flags):
        assert len(p.probs) == 10
        assert sum(p.probs) == pytest.approx(1.0, abs=1e-4)
        assert p.digit == int(np.argmax(p.probs))
        assert p.confidence == max(p.probs)
        assert next(d for d, _ in p.top_k) == p.digit and len(p.top_k) == 3
        assert p.top_k[0][1] >= p.top_k[1][1] >= p.top_k[2][1]
        assert p.uncertain == (p.confidence < 0.85)


def test_mixed_tta_batch_matches_separate_calls(engine: Engine) -> None:
    pixels = np.random.default_rng(2).normal(size=(3, 1, 28, 28)).astype(np.float32)
    together = engine.predict(pixels, [True, False, True])
    alone = [engine.predict(pixels[i : i + 1], [f])[0] for i, f in enumerate([True, False, True])]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.probs, b.probs, atol=2e-2)


def test_temperature_softens_confidence() -> None:
    torch.manual_seed(3)
    model = build_model()
    pixels = np.random.default_rng(3).normal(size=(4, 1, 28, 28)).astype(np.float32)
    sharp = Engine(model, 0.5, 0.85).predict(pixels, [False] * 4)
    soft = Engine(model, 4.0, 0.85).predict(pixels, [False] * 4)
    for s, t in zip(sharp, soft, strict=True):
        assert s.digit == t.digit
        assert s.confidence >= t.confidence


def test_precision_choice_is_measured_per_batch_size() -> None:
    choice = bf16_faster(build_model().eval(), sizes=(1, 16))
    assert set(choice) == {1, 16}
    engine = Engine(build_model(), 1.0, 0.85, bf16_by_size={1: False, 16: True})
    assert engine.use_bf16(1) is False
    assert engine.use_bf16(9) is False
    assert engine.use_bf16(64) is True


def test_mismatched_flags_are_rejected(engine: Engine) -> None:
    with pytest.raises(ValueError, match="tta flag"):
        engine.predict(np.zeros((2, 1, 28, 28), np.float32), [True])


def test_the_precision_choice_is_remembered_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference, "CACHE", tmp_path)
    module = build_model().eval()
    first = inference.cached_bf16_faster(module, "resnet18")
    assert list(tmp_path.glob("precision-*.json"))
    calls: list[object] = []

    def measure(module: object) -> dict[int, bool]:
        calls.append(module)
        return {}

    monkeypatch.setattr(inference, "bf16_faster", measure)
    assert inference.cached_bf16_faster(module, "resnet18") == first and calls == []
