from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handai import backends, openvino_ir
from handai.backends import Planned, TorchForward, candidates, native_bf16, plan
from handai.inference import Engine, tta_views
from handai.model import build_model
from handai.prediction import N_VIEWS
from handai.preprocess import BACKGROUND

MODEL = build_model().eval()
SHA = "cd" * 32  # MODEL's key in the conversion cache: its weights are new each run


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    return Engine(TorchForward(build_model()), temperature=1.0, uncertain_threshold=0.85)


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
    engine = Engine(TorchForward(MODEL), temperature=temperature, uncertain_threshold=0.85)
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
    sharp = Engine(TorchForward(model), 0.5, 0.85).predict(pixels, [False] * 4)
    soft = Engine(TorchForward(model), 4.0, 0.85).predict(pixels, [False] * 4)
    for s, t in zip(sharp, soft, strict=True):
        assert s.digit == t.digit
        assert s.confidence >= t.confidence


def test_each_batch_runs_on_the_forward_chosen_for_its_size() -> None:
    small, large = TorchForward(MODEL), TorchForward(MODEL, bf16=True)
    planned = Planned({1: small, 16: large})
    assert planned.pick(1) is small and planned.pick(9) is small
    assert planned.pick(16) is large and planned.pick(64) is large
    assert "torch-bf16" in planned.name


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODEL converted once for this module's tests (a conversion is ~40 s on a slow CPU), as
    a replica converts a new model: in a child process. torch.export and OpenVINO's converter
    hold the GIL for seconds, and a replica converting a new model itself stopped answering
    reads, so converting here fails."""
    cache = tmp_path_factory.mktemp("model-cache")

    def here(module: object) -> None:
        raise AssertionError("converted in the serving process")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "CACHE", cache)
        patch.setattr(openvino_ir, "convert", here)
        assert "openvino-f32" in candidates(MODEL, SHA, "openvino", threads=1)
    return cache


def test_the_conversion_runs_in_a_process_of_its_own(model_cache: Path) -> None:
    """The fixture's conversion ran in a child (here it would have failed), and left the
    converted model and nothing else: no half-written model, nor the weights handed over."""
    assert list(model_cache.glob("openvino/cdcd*/model.xml"))
    assert not list(model_cache.glob("openvino/*.tmp"))
    assert not list(model_cache.glob("openvino/tmp*"))


def test_openvino_gives_the_logits_of_torch(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "CACHE", model_cache)
    forwards = candidates(MODEL, SHA, "openvino", threads=2)
    assert "openvino-f32" in forwards
    batch = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    expected = TorchForward(MODEL)(batch)
    torch.testing.assert_close(forwards["openvino-f32"](batch), expected, atol=1e-3, rtol=1e-3)
    # A batch of another size reuses the same compiled model (its batch axis is dynamic).
    torch.testing.assert_close(
        forwards["openvino-f32"](batch[:2]), expected[:2], atol=1e-3, rtol=1e-3
    )


def test_openvino_answers_threads_calling_at_once(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's thread pool calls one forward from several threads (benchmarks/baseline)."""
    monkeypatch.setattr(backends, "CACHE", model_cache)
    forward = candidates(MODEL, SHA, "openvino", threads=1)["openvino-f32"]
    batches = [
        torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(8)
    ]
    expected = [TorchForward(MODEL)(b) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            got = list(pool.map(forward, batches))
            for g, e in zip(got, expected, strict=True):
                torch.testing.assert_close(g, e, atol=1e-3, rtol=1e-3)


def test_torch_only_when_asked() -> None:
    native = {"torch-bf16"} if native_bf16(torch.device("cpu")) else set()  # never emulated
    assert set(candidates(MODEL, "0" * 64, "torch", threads=2)) == {"torch-fp32", *native}


def test_mismatched_flags_are_rejected(engine: Engine) -> None:
    with pytest.raises(ValueError, match="tta flag"):
        engine.predict(np.zeros((2, 1, 28, 28), np.float32), [True])
    with pytest.raises(ValueError, match="one prior per image"):
        engine.predict(np.zeros((2, 1, 28, 28), np.float32), [True, False], [None])


def test_a_prior_is_multiplied_into_the_probabilities(engine: Engine) -> None:
    pixels = np.random.default_rng(4).normal(size=(3, 1, 28, 28)).astype(np.float32)
    plain = engine.predict(pixels, [False, True, False])
    runner_up = plain[0].top_k[1][0]
    leaning = tuple(0.9 if d == runner_up else 0.1 / 9 for d in range(10))
    flat = (0.1,) * 10
    weighed = engine.predict(pixels, [False, True, False], [leaning, flat, None])
    expected = np.array(plain[0].probs) * np.array(leaning)
    np.testing.assert_allclose(weighed[0].probs, expected / expected.sum(), rtol=1e-5)
    assert weighed[0].digit == int(np.argmax(expected))
    assert weighed[0].confidence == pytest.approx(max(expected) / expected.sum())
    # A flat prior, or none, changes nothing.
    for a, b in zip(weighed[1:], plain[1:], strict=True):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)


def test_the_choice_and_the_conversion_are_remembered(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted replica neither times the candidates again nor converts the model again
    (the fixture converted it as a replica's first start does)."""
    monkeypatch.setattr(backends, "CACHE", model_cache)
    first = plan(MODEL, SHA, "resnet18", "auto", threads=2, sizes=(1, 16))
    assert set(first.by_size) == {1, 16}
    assert list(model_cache.glob("plan-*.json"))
    calls: list[object] = []

    def measure(*args: object) -> dict[int, str]:
        calls.append(args)
        return {}

    def convert(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(backends, "fastest", measure)
    monkeypatch.setattr("openvino.convert_model", convert)
    again = plan(MODEL, SHA, "resnet18", "auto", threads=2, sizes=(1, 16))
    assert calls == []
    assert {s: f.name for s, f in again.by_size.items()} == {
        s: f.name for s, f in first.by_size.items()
    }
