"""The check every model makes where images enter it: ``model(images)`` takes a non-empty list of (3, H, W) RGB
tensors in [0, 1] (DESIGN.md, data contract).

Images outside the contract do not fail inside the network; they give wrong answers quietly. A [0, 255] image is
normalised by the model's ImageNet mean and std to values in the hundreds and comes out as "0 persons"; a float64
image or a NaN pixel fails deep inside a convolution, or not at all; an empty list or a 0-pixel image crash in
torchvision's transform with an unrelated message. :func:`check_images` refuses each with a message naming the image,
what is wrong and the fix. It costs one min/max reduction per image and one device synchronisation per call.
"""

from __future__ import annotations

import torch

__all__ = ["ImageInputError", "check_images"]

#: floating dtypes a model accepts (float16 and bfloat16 for inputs already cast for mixed precision)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ImageInputError(ValueError):
    """``model(images)`` was given images outside the contract; the message names the image and the fix."""


def check_images(images) -> None:
    """Raise :class:`ImageInputError` unless ``images`` is a non-empty list of finite (3, H, W) float32 (or half)
    tensors with H, W >= 1 and values in [0, 1].

    A tensor of values in [0, 255] (an image read as uint8 and converted without scaling) is told to divide by 255.
    """
    if isinstance(images, torch.Tensor):
        raise ImageInputError(f"model(images) takes a list of (3, H, W) tensors, got one tensor of shape "
                              f"{tuple(images.shape)}; pass list(images) (a batch) or [image]")
    if not isinstance(images, (list, tuple)):
        raise ImageInputError(f"model(images) takes a list of (3, H, W) tensors, got {type(images).__name__}")
    if len(images) == 0:
        raise ImageInputError("model(images) got an empty list; pass at least one (3, H, W) image")
    ranges = []
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise ImageInputError(f"image {index} must be a torch tensor, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[0] != 3:
            raise ImageInputError(f"image {index} must be a (3, H, W) RGB tensor, got shape {tuple(image.shape)}")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ImageInputError(f"image {index} has no pixels (shape {tuple(image.shape)})")
        if image.dtype == torch.uint8:
            raise ImageInputError(f"image {index} is uint8; the model takes float RGB in [0, 1]: pass "
                                  "image.float() / 255")
        if image.dtype not in _FLOAT_DTYPES:
            fix = "image.float()" if image.dtype.is_floating_point else "image.float() (scaled to [0, 1])"
            raise ImageInputError(f"image {index} is {image.dtype}; the model takes float32 RGB in [0, 1]: pass {fix}")
        low, high = torch.aminmax(image.detach())
        ranges.append(torch.stack([low.float(), high.float()]))
    values = torch.stack([r.cpu() for r in ranges]).tolist()  # one synchronisation for the whole batch
    for index, (low, high) in enumerate(values):
        if low >= 0.0 and high <= 1.0:
            continue
        image = images[index]
        if not bool(torch.isfinite(image).all()):
            count = int((~torch.isfinite(image)).sum())
            raise ImageInputError(f"image {index} has {count} NaN or infinite pixel values")
        if low >= 0.0 and high <= 255.0:
            raise ImageInputError(f"image {index} has values up to {high:g}: it looks like a [0, 255] image, and the "
                                  "model takes [0, 1]; divide it by 255")
        raise ImageInputError(f"image {index} has values in [{low:g}, {high:g}]; the model takes RGB in [0, 1] and "
                              "normalises it itself (do not apply a mean/std normalisation)")
