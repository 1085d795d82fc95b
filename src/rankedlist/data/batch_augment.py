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

import math

import torch
import torch.nn.functional as F

__all__ = ["BatchRandomAffine", "affine_parameters"]


def affine_parameters(
    seeds: torch.Tensor,
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    size: tuple[int, int],
) -> torch.Tensor:
    """``(B, 4)`` float64 rows ``(angle in degrees, tx px, ty px, scale)``, one per seed.

    Each row depends only on its seed: four uniforms from a generator seeded with it.
    """
    height, width = size
    rows = []
    for seed in seeds.tolist():
        u = torch.rand(4, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        angle = (2 * u[0] - 1) * degrees
        tx = torch.round((2 * u[1] - 1) * translate * width)
        ty = torch.round((2 * u[2] - 1) * translate * height)
        rows.append(torch.stack([angle, tx, ty, scale[0] + u[3] * (scale[1] - scale[0])]))
    return torch.stack(rows) if rows else torch.zeros(0, 4, dtype=torch.float64)


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
        theta = _sampling_matrices(params, h, w).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # grid_sample pads with zeros: shift so that zero is the fill value.
        warped = F.grid_sample(
            images - self.fill, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        return warped + self.fill


def _sampling_matrices(params: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, 2, 3)`` matrices mapping output to input coordinates in ``affine_grid``'s [-1, 1].

    The forward map (input -> output, in pixels about the centre) is
    ``y = T + R(angle) S x`` with the angle counter-clockwise on screen, as torchvision's;
    ``grid_sample`` needs its inverse in normalised coordinates.
    """
    angle = params[:, 0] * math.pi / 180
    tx, ty, s = params[:, 1], params[:, 2], params[:, 3]
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Inverse of the rotation-scale in pixel coordinates (the y axis points down on screen);
    # checked against torchvision.transforms.functional.affine in the tests.
    inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / s.view(
        -1, 1, 1
    )
    # Pixel <-> normalised: x_norm = x_px * 2 / w (about the centre, align_corners=False).
    to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h], dtype=params.dtype))
    to_px = torch.diag(torch.tensor([w / 2.0, h / 2.0], dtype=params.dtype))
    linear = to_norm @ inv @ to_px
    shift = -(to_norm @ inv @ torch.stack([tx, ty], -1).unsqueeze(-1)).squeeze(-1)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)
