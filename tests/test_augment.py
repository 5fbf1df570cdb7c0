import torch

from train.augment import DEFAULT, NONE, AugmentConfig, Dots, Morph, SaltPepper, build_augment


def bar() -> torch.Tensor:
    x = torch.zeros(1, 28, 28)
    x[0, 6:22, 12:16] = 1.0
    return x


def test_none_builds_nothing() -> None:
    assert build_augment(NONE) is None
    assert build_augment(DEFAULT) is not None


def test_rotation_moves_ink_but_keeps_it() -> None:
    torch.manual_seed(0)
    aug = build_augment(AugmentConfig(aug_rotate=30))
    assert aug is not None
    out = aug(bar())
    assert not torch.allclose(out, bar())
    assert abs(out.sum() - bar().sum()) / bar().sum() < 0.1


def test_translate_shifts_the_centre_of_mass() -> None:
    torch.manual_seed(1)
    aug = build_augment(AugmentConfig(aug_translate=0.2))
    assert aug is not None
    moved = [aug(bar()) for _ in range(10)]
    assert any(not torch.allclose(m, bar()) for m in moved)


def test_scale_changes_ink_area() -> None:
    torch.manual_seed(2)
    aug = build_augment(AugmentConfig(scale=0.4))
    assert aug is not None
    areas = {round(float(aug(bar()).sum()), 1) for _ in range(10)}
    assert len(areas) > 1


def test_salt_and_pepper_flips_pixels() -> None:
    torch.manual_seed(3)
    out = SaltPepper(0.1)(bar())
    changed = (out != bar()).float().mean()
    assert 0.02 < changed < 0.1


def test_dots_add_ink() -> None:
    torch.manual_seed(4)
    out = Dots(1.0)(torch.zeros(1, 28, 28))
    assert 4 <= out.sum() <= 12


def test_blur_softens_edges() -> None:
    torch.manual_seed(5)
    aug = build_augment(AugmentConfig(blur_sigma=2.0))
    assert aug is not None
    outs = [aug(bar()) for _ in range(8)]
    assert any(((o > 0.05) & (o < 0.95)).any() for o in outs)


def test_morph_thickens_or_thins() -> None:
    torch.manual_seed(6)
    sums = {float(Morph(1.0)(bar()).sum()) for _ in range(20)}
    base = float(bar().sum())
    assert any(s > base for s in sums) and any(s < base for s in sums)
