"""Training augmentation on batches of preprocessed N x 1 x 28 x 28 ink tensors in [0, 1]
(1 = ink, 0 = paper), applied on the training device after the batch is loaded."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from train.augment_config import NONE, AugmentConfig


class BatchAugment:
    """Augments a whole batch of N x 1 x H x W ink tensors at once, on their own device.

    Every sample draws its own parameters. Rotation, shift, zoom, keystone and the elastic
    wobble become one sampling grid and one `grid_sample`; the pixel steps are masked
    tensor operations, so a batch costs a handful of kernels instead of a Python loop per image.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.aug_rotate or cfg.aug_translate or cfg.scale or cfg.perspective or cfg.elastic:
            x = F.grid_sample(x, self._grid(x), mode="bilinear", align_corners=False)
        if cfg.morph:
            x = _morph(x, cfg.morph)
        if cfg.breaks:
            x = _breaks(x, cfg.breaks)
        if cfg.texture:
            grain = 1.0 - cfg.texture * torch.rand_like(x)
            x = torch.where(_chance(x, 0.5), x * grain, x)
        if cfg.blur_sigma:
            x = torch.where(_chance(x, 0.5), _blur(x, cfg.blur_sigma), x)
        if cfg.dots_prob:
            x = _dots(x, cfg.dots_prob)
        if cfg.noise_prob:
            hit = torch.rand_like(x) < cfg.noise_prob
            x = torch.where(hit, (torch.rand_like(x) < 0.5).to(x.dtype), x)
        return x.clamp_(0.0, 1.0)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """Where each output pixel samples the input, in grid_sample's [-1, 1] coordinates:
        the elastic wobble, then the inverse keystone, then the inverse affine."""
        cfg = self.cfg
        n, _, h, w = x.shape
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack([gx, gy], -1).expand(n, h, w, 2)
        if cfg.elastic:
            points = points + _chance(x, 0.5)[:, 0, :, :, None] * _wobble(x, cfg.elastic)
        matrix = _affine_inverse(n, cfg, x.device)
        if cfg.perspective:
            keystone = _keystone_inverse(n, cfg.perspective, x.device)
            plain = torch.eye(3, device=x.device).expand(n, 3, 3)
            matrix = matrix @ torch.where(_chance(x, 0.5)[:, :, :, 0], keystone, plain)
        homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1)
        mapped = homogeneous.reshape(n, -1, 3) @ matrix.transpose(1, 2)
        return (mapped[..., :2] / mapped[..., 2:]).reshape(n, h, w, 2)


def _chance(x: torch.Tensor, p: float) -> torch.Tensor:
    """One coin per sample, shaped to broadcast over N x 1 x H x W."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p


def _uniform(n: int, bound: float, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, device=device) * 2 - 1) * bound


def _affine_inverse(n: int, cfg: AugmentConfig, device: torch.device) -> torch.Tensor:
    """Per sample, the inverse of: zoom s, rotate a, shift t (as torchvision's RandomAffine
    draws them), as 3 x 3 matrices on output coordinates."""
    angle = torch.deg2rad(_uniform(n, cfg.aug_rotate, device))
    zoom = 1.0 + _uniform(n, cfg.scale, device)
    shift = torch.stack([_uniform(n, 2 * cfg.aug_translate, device) for _ in range(2)], -1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    inverse = torch.zeros(n, 3, 3, device=device)
    inverse[:, 0, 0], inverse[:, 0, 1], inverse[:, 1, 0], inverse[:, 1, 1] = cos, sin, -sin, cos
    inverse[:, :2, 2] = -(inverse[:, :2, :2] @ shift[..., None])[..., 0]
    inverse[:, 2, 2] = 1.0
    return inverse


def _keystone_inverse(n: int, distortion: float, device: torch.device) -> torch.Tensor:
    """Per sample, the homography taking the corners pulled inward by up to `distortion` of
    the half side (torchvision's RandomPerspective) back to the image's corners."""
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=device)
    moved = corners - corners.sign() * torch.rand(n, 4, 2, device=device) * distortion
    return _homography(moved, corners.expand(n, 4, 2))


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """N x 3 x 3 matrices mapping each sample's 4 src points onto its 4 dst points."""
    n = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    system = torch.cat([rows_u, rows_v], 1)
    solved = torch.linalg.solve(system, torch.cat([u, v], 1))
    return torch.cat([solved, torch.ones(n, 1, device=src.device)], 1).reshape(n, 3, 3)


def _wobble(x: torch.Tensor, alpha: float, sigma: float = 4.0) -> torch.Tensor:
    """torchvision's ElasticTransform displacement: smoothed uniform noise, alpha / side."""
    n, _, h, w = x.shape
    noise = torch.rand(n * 2, 1, h, w, device=x.device) * 2 - 1
    size = int(8 * sigma + 1) | 1
    smooth = _gaussian(noise, torch.full((n * 2,), sigma, device=x.device), size)
    return smooth.reshape(n, 2, h, w).permute(0, 2, 3, 1) * (alpha / h)


def _gaussian(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Each sample blurred with its own sigma (separable, reflect-padded like torchvision)."""
    n, _, h, w = x.shape
    taps = torch.arange(size, device=x.device, dtype=x.dtype) - size // 2
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True))[:, None]
    pad = size // 2
    rows = x.reshape(1, n, h, w)
    if pad < min(h, w):
        rows = F.pad(rows, (pad, pad, pad, pad), mode="reflect")
    else:
        rows = F.pad(rows, (pad, pad, pad, pad), mode="replicate")
    rows = F.conv2d(rows, kernel[..., None], groups=n)
    rows = F.conv2d(rows, kernel[:, :, None], groups=n)
    return rows.reshape(n, 1, h, w)


def _blur(x: torch.Tensor, max_sigma: float) -> torch.Tensor:
    sigma = 0.1 + torch.rand(x.shape[0], device=x.device) * (max_sigma - 0.1)
    return _gaussian(x, sigma.clamp(min=0.1), 5)


def _morph(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Erode or dilate with a 3x3 window: pen widths vary more than MNIST's."""
    thick = F.max_pool2d(x, 3, stride=1, padding=1)
    thin = -F.max_pool2d(-x, 3, stride=1, padding=1)
    changed = torch.where(_chance(x, 0.5), thick, thin)
    return torch.where(_chance(x, prob), changed, x)


def _spots(x: torch.Tensor, prob: float, where: torch.Tensor) -> torch.Tensor:
    """1-3 two-pixel squares per sample (with chance prob), at random pixels where `where`
    is positive: a N x 1 x H x W mask of the squares' pixels."""
    n, _, h, w = x.shape
    points = torch.zeros(n, h * w, device=x.device)
    count = torch.randint(1, 4, (n,), device=x.device)
    chosen = _chance(x, prob).flatten()
    for i in range(3):
        score = torch.rand(n, h * w, device=x.device) * where.reshape(n, -1)
        best, index = score.max(1)
        hit = (chosen & (i < count) & (best > 0)).to(points.dtype)
        points.scatter_add_(1, index[:, None], hit[:, None])
    return points.reshape(n, 1, h, w).clamp_(max=1.0)


def _breaks(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Gaps where the pen skipped or a ruled line was removed across a stroke."""
    spots = _spots(x, prob, (x > 0.5).to(x.dtype))
    gaps = F.max_pool2d(F.pad(spots, (0, 1, 0, 1)), 2, stride=1)  # the square up-left of it
    return x * (1.0 - gaps)


def _dots(x: torch.Tensor, prob: float) -> torch.Tensor:
    """1-3 stray 2x2 dots anywhere, ink at full strength."""
    inside = torch.ones_like(x)
    inside[..., -1, :] = 0.0
    inside[..., :, -1] = 0.0
    dots = F.max_pool2d(F.pad(_spots(x, prob, inside), (1, 0, 1, 0)), 2, stride=1)
    return torch.maximum(x, dots)


def build_augment(cfg: AugmentConfig) -> BatchAugment | None:
    """The batch transform for cfg, or None when every option is off."""
    return None if cfg == NONE else BatchAugment(cfg)
