"""The int8 copy of a model (handai.int8): calibrated on MNIST training digits, checked
against the float model before it may serve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from handai import backends, int8, openvino_ir, registry
from tests.images import DATA
from train import int8_sample


@pytest.fixture(scope="module")
def seed() -> registry.LoadedModel:
    return registry.load(registry.SEED_DIR, registry.list_manifests(registry.SEED_DIR)[0].model_id)


def test_the_sample_is_mnist_training_digits_as_the_service_preprocesses_them() -> None:
    indices, images = int8_sample.build(DATA)
    with np.load(int8.SAMPLE) as stored:
        np.testing.assert_array_equal(stored["indices"], indices)
        np.testing.assert_array_equal(stored["images"], images)
    assert len(set(indices.tolist())) == int8_sample.SIZE > int8.CALIBRATION


def test_the_seed_models_int8_copy_is_kept_and_gives_the_logits_of_torch(
    seed: registry.LoadedModel,
) -> None:
    # In the machine's cache, as `make serve` converts it (and test_seed_model reads it there).
    forwards = backends.candidates(seed.module, seed.sha256, "openvino", threads=1)
    assert "openvino-int8" in forwards  # NNCF installs with the project
    folders = backends.CACHE.glob(f"openvino/{seed.sha256[:32]}-*-q")
    (record_path,) = [f / openvino_ir.INT8_RECORD for f in folders]
    record = json.loads(record_path.read_text())
    assert record["kept"] and record["disagreement"] <= int8.MAX_DISAGREEMENT, record
    pixels = torch.from_numpy(int8.sample_pixels()[int8.CALIBRATION :])
    reference = backends.TorchForward(seed.module)(pixels)
    quantized = forwards["openvino-int8"](pixels)
    assert float((quantized.argmax(1) == reference.argmax(1)).float().mean()) >= 0.999
    # Close, not equal: int8 moves a logit by a fraction of the margins that decide a digit.
    assert float((quantized - reference).abs().mean()) < 0.1


def test_a_copy_that_reads_differently_is_refused(seed: registry.LoadedModel) -> None:
    """The check is what keeps a model that quantizes badly in float: a copy whose weights
    are off by as much as int8 rounding could put them if it went wrong fails it."""
    pixels = int8.sample_pixels()
    float_model = openvino_ir.convert(seed.module)
    damaged = registry.load(registry.SEED_DIR, seed.manifest.model_id).module
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in damaged.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * parameter.std() * 0.5)
    result = int8.check(float_model, openvino_ir.convert(damaged), pixels)
    assert not result.passed, result
    assert result.images == len(pixels) - int8.CALIBRATION
    same = int8.check(float_model, float_model, pixels)
    assert same.passed and same.disagreement == 0.0 and same.mean_shift < 1e-5
