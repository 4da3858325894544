"""Flow warping between pyramid levels (Zhou et al., CVPR 2021, §3.2, Eqs. 4-6).

The coarse-to-fine DSPF moves a coarse map (a feature ``X_{l+1}`` or a DSPF ``D_{l+1}``) onto the grid of the next
finer level ``l``. Plain bilinear upsampling samples the coarse map at the point under each fine cell's centre. The
learnable warp samples it at that point *moved by a feature flow* ``F_l(u)`` (Eq. 4) predicted from both levels, so
that the network can undo the misalignment that padding, striding and upsampling leave between levels (Eqs. 5-6).

Conventions (the released code mixes two of them, see the module notes in ``reference/methods.md`` §4.1; hparse uses
one everywhere):

- **Pixel centres, ``align_corners=False``.** Cell ``j`` of a level with ``w`` cells covers ``[j, j + 1)`` in that
  level's cell units, centre ``j + 0.5``. The fine and coarse grids cover the same image, so the fine cell centre
  ``(j + 0.5)`` lies at normalised coordinate ``2 (j + 0.5) / W - 1`` in both; ``grid_sample(align_corners=False)``
  reads the coarse map at exactly that point.
- **Flow units: cells of the fine level** ``l``, ``(dx, dy)`` in channel order (x first), as in Eq. 6 where
  ``u_s = u + F_l(u)`` is a coordinate of the fine grid. One unit is one fine cell (``stride_l`` image pixels).
- **One interpolation.** Eq. 6 reads the *bilinearly upsampled* map ``X⇑`` at ``u + F_l(u)``, interpolating twice;
  we read the coarse map itself at the same physical point (as the released ``AlignModule`` does), which is one
  bilinear interpolation. With zero flow this is exactly ``F.interpolate(mode="bilinear", align_corners=False)``
  (:func:`flow_warp` with a zero flow; tested), so ``warp=False`` is the zero-flow special case.
- **Borders**: points outside the coarse map read its nearest border value (``padding_mode="border"``), which is what
  ``F.interpolate`` does at the image edge.
- **DSPF values** are in cells of their own level; moving to a level twice as fine doubles them (Eqs. 2-3, "×2"):
  :func:`upsample_field` and the ``scale`` argument of :func:`flow_warp`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["flow_warp", "upsample_field", "base_grid"]


def base_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H, W, 2) cell centres ``(j + 0.5, i + 0.5)`` of an ``H x W`` grid, in cell units, x first."""
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)


def flow_warp(x: torch.Tensor, flow: torch.Tensor | None, size: tuple[int, int] | None = None,
              scale: float = 1.0) -> torch.Tensor:
    """Warp a coarse map onto a finer grid along a flow (Eqs. 5-6): ``out(u) = scale * x(u + flow(u))``.

    Args:
        x: (B, C, h, w) coarse map.
        flow: (B, 2, H, W) flow in cells of the fine grid (x then y), or ``None`` for zero flow (plain bilinear
            upsampling).
        size: (H, W) of the fine grid; default the flow's.
        scale: multiplies the result (2 for a DSPF moving one level finer, whose values are in cells).

    Returns:
        (B, C, H, W).
    """
    if size is None:
        if flow is None:
            raise ValueError("flow_warp needs size when flow is None")
        size = tuple(flow.shape[-2:])
    height, width = size
    if flow is None:
        out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return out * scale if scale != 1.0 else out
    if flow.shape[-2:] != (height, width) or flow.shape[1] != 2:
        raise ValueError(f"flow must be (B, 2, {height}, {width}), got {tuple(flow.shape)}")
    points = base_grid(height, width, flow.device, flow.dtype)[None] + flow.permute(0, 2, 3, 1)  # (B, H, W, 2)
    norm = torch.tensor([2.0 / width, 2.0 / height], device=flow.device, dtype=flow.dtype)
    grid = points * norm - 1
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out * scale if scale != 1.0 else out


def upsample_field(field: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample a (B, 2, h, w) displacement field in cell units to ``size``, rescaling its values to the
    new grid's cells (x by ``W / w``, y by ``H / h``; ×2 per level)."""
    height, width = size
    sx, sy = width / field.shape[-1], height / field.shape[-2]
    out = F.interpolate(field, size=size, mode="bilinear", align_corners=False)
    return out * torch.tensor([sx, sy], device=field.device, dtype=field.dtype).view(1, 2, 1, 1)
