"""RoIAlign with a fast CPU backward: the bilinear sampling written as one sparse interpolation matrix.

RoIAlign (Mask R-CNN, He et al. 2017, Sec. 3) averages, in each of the S x S bins of a box, ``sr x sr`` bilinear
samples of a feature map. Every output value is therefore a fixed linear combination of at most ``4 sr^2`` input
pixels: with the features of all images flattened to a (N H W, C) matrix ``F``, the pooled features are ``M F`` for a
sparse (R S S, N H W) matrix ``M`` of interpolation weights, and the gradient with respect to the features is
``M^T G``.

Why not torchvision's kernel everywhere: its CPU backward scatters every sample of every channel serially, one
scalar at a time. On a 2-core CPU it took 47 % of an attention-framework training step at the cpu profile (1.7 s of
3.6 s: 512 box RoIs at 14x14 plus 16 parsing RoIs at 28x28 on four levels), while ``M^T G`` is one multithreaded
sparse-dense product (``hparse bench roi_align`` measures both). On CUDA, and wherever no gradient is needed,
torchvision's kernel is used as it is.

Semantics are torchvision's ``roi_align`` exactly (up to float rounding), ``aligned=False`` and ``aligned=True``
alike: box corners scaled by ``spatial_scale`` (minus half a pixel when aligned), a box at least one feature pixel
wide when not aligned, samples at the centres of an ``sr x sr`` grid in each bin, samples more than one pixel outside
the map contributing zero, samples within one pixel of the border clamped onto it, and every bin divided by
``sr^2``. Only a fixed ``sampling_ratio > 0`` takes the sparse path (the adaptive ``sampling_ratio <= 0`` gives each
RoI its own grid; torchvision handles it).
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align
from torchvision.ops.poolers import _setup_scales

__all__ = ["roi_align", "MultiScaleRoIAlign", "interpolation_matrix", "uses_sparse_path"]


def uses_sparse_path(input: Tensor, sampling_ratio: int) -> bool:
    """Whether :func:`roi_align` takes the sparse-matrix path: a float32/64 CPU input that needs a gradient."""
    return (input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64) and sampling_ratio > 0
            and input.requires_grad and torch.is_grad_enabled())


def _as_rois(boxes: Tensor | list[Tensor], like: Tensor) -> Tensor:
    """(K, 5) ``[batch index, x1, y1, x2, y2]`` from a (K, 5) tensor or a list of per-image (K_i, 4) boxes."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"roi_align: a tensor of boxes must be (K, 5) [batch index, x1, y1, x2, y2], "
                             f"got {tuple(boxes.shape)}")
        return boxes.to(like.dtype)
    for index, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"roi_align: boxes of image {index} must be (K, 4) xyxy, got {tuple(b.shape)}")
    if not boxes:
        return like.new_zeros(0, 5)
    ids = torch.cat([torch.full((len(b), 1), i, dtype=like.dtype, device=like.device) for i, b in enumerate(boxes)])
    return torch.cat((ids, torch.cat([b.to(like) for b in boxes])), dim=1)


def _axis_samples(start: Tensor, end: Tensor, bins: int, sampling_ratio: int, size: int, aligned: bool):
    """Along one axis: the two neighbouring pixels and their weights for every sample of every RoI.

    Returns ``(low, high, weight_low, weight_high)``, each (K, bins * sampling_ratio); samples more than one pixel
    outside ``[0, size - 1]`` get zero weights (torchvision's ``y < -1 or y > height`` rule).
    """
    length = end - start
    if not aligned:
        length = length.clamp(min=1.0)  # "force malformed RoIs to be 1x1"
    steps = (torch.arange(bins * sampling_ratio, dtype=start.dtype, device=start.device) + 0.5) / sampling_ratio
    coords = start[:, None] + steps[None] * (length / bins)[:, None]  # (K, bins * sr) sample positions
    inside = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0.0)
    low = coords.floor().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    coords = torch.where(low >= size - 1, low, coords)  # at the last pixel every weight goes to it
    fraction = coords - low
    weight_low = (1 - fraction) * inside
    weight_high = fraction * inside
    return low.long(), high.long(), weight_low, weight_high


def interpolation_matrix(rois: Tensor, feature_shape: tuple[int, int, int, int], output_size: tuple[int, int],
                         spatial_scale: float, sampling_ratio: int, aligned: bool = False) -> Tensor:
    """The sparse (K S_h S_w, N H W) matrix ``M`` with ``roi_align(x) = M x`` on channels-last flattened features.

    Row ``k S_h S_w + i S_w + j`` is bin (i, j) of RoI k; it holds ``4 sr^2`` weights (four bilinear corners of each
    of the ``sr x sr`` samples, divided by ``sr^2``), repeated column indices included, which the product sums.

    Args:
        rois: (K, 5) ``[batch index, x1, y1, x2, y2]`` in image pixels.
        feature_shape: ``(N, C, H, W)`` of the feature map.
        output_size: ``(S_h, S_w)``.
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: samples per bin side (> 0).
        aligned: torchvision's ``aligned`` (shift by half a pixel).

    Returns:
        a sparse CSR tensor of the RoIs' dtype and device.
    """
    batch, _, height, width = feature_shape
    bins_h, bins_w = output_size
    sr = sampling_ratio
    offset = 0.5 if aligned else 0.0
    scaled = rois[:, 1:] * spatial_scale - offset
    y_low, y_high, wy_low, wy_high = _axis_samples(scaled[:, 1], scaled[:, 3], bins_h, sr, height, aligned)
    x_low, x_high, wx_low, wx_high = _axis_samples(scaled[:, 0], scaled[:, 2], bins_w, sr, width, aligned)
    num = rois.shape[0]
    base = rois[:, 0].long().clamp(0, batch - 1)[:, None, None] * (height * width)  # (K, 1, 1) first pixel of its image

    # Columns and weights of the four corners, shaped (K, S_h, sr, S_w, sr, 4) and reordered so that each bin's
    # 4 sr^2 entries are contiguous: (K, S_h, S_w, sr, sr, 4) is then exactly the CSR layout.
    columns, weights = [], []
    for y, wy in ((y_low, wy_low), (y_high, wy_high)):
        for x, wx in ((x_low, wx_low), (x_high, wx_high)):
            columns.append(base + y[:, :, None] * width + x[:, None, :])  # (K, S_h sr, S_w sr)
            weights.append(wy[:, :, None] * wx[:, None, :])
    columns = torch.stack(columns, -1).view(num, bins_h, sr, bins_w, sr, 4).permute(0, 1, 3, 2, 4, 5)
    weights = torch.stack(weights, -1).view(num, bins_h, sr, bins_w, sr, 4).permute(0, 1, 3, 2, 4, 5)
    per_row = 4 * sr * sr
    rows = num * bins_h * bins_w
    crow = torch.arange(0, rows * per_row + 1, per_row, device=rois.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is long established
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, columns.reshape(-1), weights.reshape(-1) / (sr * sr),
                                       size=(rows, batch * height * width), check_invariants=False)


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """torchvision's ``roi_align`` (same arguments, same result) with a fast CPU path for training.

    On a float CPU input that requires a gradient (and ``sampling_ratio > 0``) the pooling is the sparse product
    ``M F`` of :func:`interpolation_matrix`; its backward is ``M^T G``. Everywhere else torchvision's kernel runs.

    Shape:
        ``input`` (N, C, H, W); ``boxes`` (K, 5) or a list of (K_i, 4) -> (K, C, S_h, S_w).
    """
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if not uses_sparse_path(input, sampling_ratio):
        return torchvision_roi_align(input, boxes, size, spatial_scale, sampling_ratio, aligned)
    rois = _as_rois(boxes, input)
    batch, channels = input.shape[:2]
    if rois.shape[0] == 0:
        return input.new_zeros(0, channels, *size) + 0 * input.sum()  # keeps the graph for an empty batch
    matrix = interpolation_matrix(rois.detach(), tuple(input.shape), size, spatial_scale, sampling_ratio, aligned)
    flat = input.permute(0, 2, 3, 1).reshape(-1, channels)  # (N H W, C) channels last
    pooled = matrix @ flat  # (K S_h S_w, C)
    return pooled.view(rois.shape[0], size[0], size[1], channels).permute(0, 3, 1, 2)


class MultiScaleRoIAlign(torchvision.ops.MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (FPN level assignment, Eq. 1 of Lin et al. 2017) over :func:`roi_align`.

    Same constructor, same level mapping and scales (torchvision's ``_setup_scales``); only the pooling op differs,
    and ``aligned`` is an argument: torchvision's class always pools with ``aligned=False``, which samples half a
    feature cell away from where the cell's centre lies in the image (a "misalignment" Detectron2's ROIAlignV2
    removed). hparse's models pool with ``aligned=True`` (see :class:`hparse.models.detector.TopDownParser`).
    """

    def __init__(self, featmap_names: list[str], output_size, sampling_ratio: int, *, canonical_scale: int = 224,
                 canonical_level: int = 4, aligned: bool = False):
        super().__init__(featmap_names, output_size, sampling_ratio, canonical_scale=canonical_scale,
                         canonical_level=canonical_level)
        self.aligned = aligned

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                     self.canonical_level)
        rois = _as_rois(boxes, features[0])
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio, self.aligned)
        levels = self.map_levels(boxes)
        first = features[0]
        result = first.new_zeros(rois.shape[0], first.shape[1], *self.output_size)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio, self.aligned)
            result = result.index_put((index,), pooled.to(result.dtype))  # out of place: keeps every level's graph
        return result
