"""Augmentation of a whole batch on tensors: one batched random affine per step.

Per-image PIL transforms cost about as much as the forward and backward passes of the small glyph
network; here the batch is warped by one ``affine_grid`` + ``grid_sample`` on the training device.
Each sample's parameters come from its own seed (the batch feed derives it from the run's seed,
the epoch, the batch and the position in the global batch), so the augmentation of an image does
not depend on its batch-mates, the number of processes or a resume.

The distribution is torchvision's ``RandomAffine(degrees, translate, scale, fill)`` as the glyph
pipeline used it per image: angle uniform in [-degrees, degrees], translation uniform in
[-translate * size, translate * size] rounded to whole pixels, scale uniform in [scale_min,
scale_max], about the image centre, nearest-neighbour sampling, ``fill`` outside the image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BatchRandomAffine", "affine_parameters"]


def affine_parameters(
    seeds: torch.Tensor,
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    size: tuple[int, int],
) -> np.ndarray:
    """``(B, 4)`` float64 rows ``(angle in degrees, tx px, ty px, scale)``, one per seed.

    Each row depends only on its seed: four uniforms hashed from it (splitmix64, vectorised:
    a generator object per sample would cost more than the warp itself).
    """
    height, width = size
    u = _uniforms(seeds.numpy().astype(np.uint64), 4)
    angle = (2 * u[:, 0] - 1) * degrees
    tx = np.round((2 * u[:, 1] - 1) * translate * width)
    ty = np.round((2 * u[:, 2] - 1) * translate * height)
    zoom = scale[0] + u[:, 3] * (scale[1] - scale[0])
    return np.stack([angle, tx, ty, zoom], axis=1)


def _uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """``(len(seeds), count)`` uniforms in [0, 1) from splitmix64 of ``seed`` and the column."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        x = seeds[:, None] + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(
            0x9E3779B97F4A7C15
        )
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


class BatchRandomAffine:
    """Warp each image of a ``(B, C, H, W)`` batch by its own random affine transform.

    Args:
        degrees: rotation range (+-).
        translate: largest shift as a fraction of the side.
        scale: ``(min, max)`` zoom.
        fill: the value outside the image, in the batch's units (white after the glyphs'
            normalisation to [-1, 1] is 1.0).
    """

    def __init__(
        self,
        degrees: float = 8.0,
        translate: float = 0.06,
        scale: tuple[float, float] = (0.9, 1.1),
        fill: float = 1.0,
    ) -> None:
        self.degrees, self.translate, self.scale, self.fill = degrees, translate, scale, fill

    def __repr__(self) -> str:
        return (
            f"BatchRandomAffine(degrees={self.degrees}, translate={self.translate}, "
            f"scale={self.scale}, fill={self.fill})"
        )

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        params = affine_parameters(seeds, self.degrees, self.translate, self.scale, (h, w))
        theta = torch.from_numpy(_sampling_matrices(params, h, w)).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # grid_sample pads with zeros: shift so that zero is the fill value.
        warped = F.grid_sample(
            images - self.fill, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        return warped + self.fill


def _sampling_matrices(params: np.ndarray, h: int, w: int) -> np.ndarray:
    """``(B, 2, 3)`` matrices mapping output to input coordinates in ``affine_grid``'s [-1, 1].

    The forward map (input -> output, in pixels about the centre) is ``y = T + R(angle) S x``
    with torchvision's angle convention; ``grid_sample`` needs its inverse in normalised
    coordinates (checked against torchvision.transforms.functional.affine in the tests).
    """
    angle = np.deg2rad(params[:, 0])
    tx, ty, s = params[:, 1], params[:, 2], params[:, 3]
    cos, sin = np.cos(angle) / s, np.sin(angle) / s
    # The inverse rotation-scale in pixels, then pixels <-> normalised (x_norm = x_px * 2 / w).
    a, b = cos, sin * h / w  # row 1: x_in = a x + b y (normalised)
    c, d = -sin * w / h, cos  # row 2
    ex = -(cos * tx + sin * ty) * 2 / w
    ey = -(-sin * tx + cos * ty) * 2 / h
    return np.stack([np.stack([a, b, ex], -1), np.stack([c, d, ey], -1)], 1)
