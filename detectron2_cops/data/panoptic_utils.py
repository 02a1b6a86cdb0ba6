"""Encoding of COCO-panoptic-format segment ids as RGB images (no Detectron2, no panopticapi).

The COCO panoptic format (Kirillov et al., "Panoptic Segmentation", CVPR 2019; format at
http://cocodataset.org/#format-data) stores one segment id per pixel in a PNG as
``id = R + 256 * G + 256**2 * B``; id 0 is void. These are the two conversions, written here so
that the project does not need ``panopticapi``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rgb2id", "id2rgb", "MAX_PANOPTIC_ID"]

#: Largest id an RGB PNG can hold (``256**3 - 1``).
MAX_PANOPTIC_ID = 256**3 - 1


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Decode an RGB-encoded panoptic PNG into segment ids.

    Args:
        color: ``[H, W, 3]`` integer array (a PNG read with ``convert("RGB")``), channels R, G, B.
    Returns:
        ``[H, W] int64`` ids ``R + 256 G + 256^2 B`` (0 = void).
    """
    color = np.asarray(color, dtype=np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Encode segment ids as an RGB image (inverse of :func:`rgb2id`).

    Args:
        ids: ``[H, W]`` integer array with values in ``[0, 256**3 - 1]``.
    Returns:
        ``[H, W, 3] uint8`` array.
    Raises:
        ValueError: ``ids`` is not 2-D integer or has values outside ``[0, 256**3 - 1]``.
    """
    ids = np.asarray(ids)
    int_map = ids.ndim == 2 and np.issubdtype(ids.dtype, np.integer)
    lo, hi = (int(ids.min()), int(ids.max())) if int_map and ids.size else (0, 0)
    if not int_map or lo < 0 or hi > MAX_PANOPTIC_ID:
        raise ValueError(
            f"ids must be an [H, W] integer array with values in [0, {MAX_PANOPTIC_ID}] (the RGB "
            f"range), got shape {list(ids.shape)}, dtype {ids.dtype}, range [{lo}, {hi}]"
        )
    ids = ids.astype(np.int64)
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = ids // (256 * 256)
    return rgb
