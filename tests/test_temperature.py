import pytest
import torch

from handai.manifest import Manifest, new_manifest
from train.promote import gate
from train.temperature import ece, fit_temperature


def sample(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_recovers_a_known_temperature(true_t: float) -> None:
    logits, labels = sample(20000, 0)
    assert fit_temperature(logits * true_t, labels) == pytest.approx(true_t, rel=0.05)


def test_scaling_lowers_calibration_error() -> None:
    logits, labels = sample(20000, 1)
    overconfident = logits * 3
    t = fit_temperature(overconfident, labels)
    assert (
        ece(torch.softmax(overconfident / t, 1), labels)
        < ece(torch.softmax(overconfident, 1), labels) / 3
    )


def test_ece_of_a_perfect_oracle_is_zero() -> None:
    probs = torch.eye(10)[torch.arange(100) % 10]
    assert ece(probs, torch.arange(100) % 10) == pytest.approx(0.0)


def manifest(model_id: str, val_acc: float) -> Manifest:
    return new_manifest(model_id, val_acc=val_acc, temperature=1.0, sha256="0" * 64)


def test_gate_passes_better_and_near_models() -> None:
    active = manifest("old", 0.995)
    assert gate(manifest("new", 0.996), active) is None
    assert gate(manifest("new", 0.994), active) is None
    assert gate(manifest("new", 0.9), None) is None


def test_gate_blocks_a_worse_model_and_says_why() -> None:
    reason = gate(manifest("new", 0.98), manifest("old", 0.995))
    assert reason is not None and "0.9800" in reason and "old" in reason
