import pytest
import torch

from train.augment import build_augment
from train.augment_config import DEFAULT, NONE, WILD, AugmentConfig


def bars(n: int = 16) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28)
    x[:, 0, 6:22, 12:16] = 1.0
    return x


def augmented(cfg: AugmentConfig, seed: int, n: int = 16) -> torch.Tensor:
    torch.manual_seed(seed)
    aug = build_augment(cfg)
    assert aug is not None
    return aug(bars(n))


def test_none_builds_nothing() -> None:
    assert build_augment(NONE) is None
    assert build_augment(DEFAULT) is not None


@pytest.mark.parametrize("cfg", [DEFAULT, WILD], ids=["default", "wild"])
def test_a_batch_keeps_its_shape_and_range_and_each_sample_differs(cfg: AugmentConfig) -> None:
    out = augmented(cfg, 0, n=64)
    assert out.shape == (64, 1, 28, 28)
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert len({round(float(s), 3) for s in out.sum((1, 2, 3))}) > 48  # own draws per sample
    assert (out.sum((1, 2, 3)) > 0.05 * bars(1).sum()).all()  # the digit stays in the frame


def test_the_same_seed_gives_the_same_batch() -> None:
    assert torch.equal(augmented(WILD, 7), augmented(WILD, 7))
    assert not torch.equal(augmented(WILD, 7), augmented(WILD, 8))


def test_rotation_moves_ink_but_keeps_it() -> None:
    out = augmented(AugmentConfig(aug_rotate=30), 0)
    assert not torch.allclose(out, bars())
    assert ((out.sum((1, 2, 3)) - bars().sum((1, 2, 3))).abs() / bars().sum((1, 2, 3)) < 0.1).all()


def test_translate_shifts_the_centre_of_mass() -> None:
    out = augmented(AugmentConfig(aug_translate=0.2), 1)
    cols = torch.arange(28.0)
    centre = (out.sum((1, 2)) * cols).sum(1) / out.sum((1, 2, 3))
    assert (centre - 13.5).abs().max() > 2.0


def test_scale_changes_ink_area() -> None:
    areas = augmented(AugmentConfig(scale=0.4), 2).sum((1, 2, 3))
    assert areas.max() > 1.2 * areas.min()


def test_keystone_and_elastic_bend_the_bar() -> None:
    for cfg in (AugmentConfig(perspective=0.4), AugmentConfig(elastic=60.0)):
        out = augmented(cfg, 3)
        changed = (out - bars()).abs().sum((1, 2, 3)) > 1.0
        assert 2 <= int(changed.sum()) <= 14  # about half the samples, by design


def test_salt_and_pepper_flips_pixels() -> None:
    out = augmented(AugmentConfig(noise_prob=0.1), 3)
    changed = (out != bars()).float().mean()
    assert 0.02 < changed < 0.1


def test_dots_add_ink() -> None:
    torch.manual_seed(4)
    aug = build_augment(AugmentConfig(dots_prob=1.0))
    assert aug is not None
    added = aug(torch.zeros(32, 1, 28, 28)).sum((1, 2, 3))
    assert ((added >= 2) & (added <= 12)).all()


def test_breaks_cut_gaps_in_strokes() -> None:
    out = augmented(AugmentConfig(breaks=1.0), 5)
    lost = bars().sum((1, 2, 3)) - out.sum((1, 2, 3))
    assert ((lost >= 1) & (lost <= 12)).all()


def test_blur_softens_edges() -> None:
    out = augmented(AugmentConfig(blur_sigma=2.0), 5)
    soft = ((out > 0.05) & (out < 0.95)).flatten(1).any(1)
    assert 2 <= int(soft.sum()) <= 14


def test_texture_dims_ink() -> None:
    out = augmented(AugmentConfig(texture=0.5), 6)
    assert out.max() <= 1.0 and (out.sum((1, 2, 3)) < bars().sum((1, 2, 3))).any()


def test_morph_thickens_or_thins() -> None:
    sums = augmented(AugmentConfig(morph=1.0), 6).sum((1, 2, 3))
    base = float(bars(1).sum())
    assert (sums > base).any() and (sums < base).any()
