"""Tensor predicates of the layers' public boundaries (the AMWC layer, the PQ surrogate, the
calibration and dropout modules); the torch-free ones are in :mod:`detectron2_cops.checks`."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


class NonFiniteError(ValueError, FloatingPointError):
    """NaN or inf in a tensor given to a layer (costs, weights, masks) or in the incoming gradients
    of the AMWC layer's backward: a ``ValueError`` (bad input) and a ``FloatingPointError`` (in
    training, the sign that the model diverged)."""


def all_finite(x: Tensor) -> bool:
    """True if ``x`` has no NaN/inf. One reduction without a temporary: a finite sum implies that
    every entry is finite; only a non-finite sum (NaN/inf, or overflow) triggers the exact check."""
    x = x.detach()
    return x.numel() == 0 or bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def check_tensor(x, name: str, desc: str, *, shape: Optional[Sequence[int]] = None, ndim: Optional[int] = None,
                 device=None, allow_bool: bool = False, finite: bool = True, non_negative: bool = False,
                 at_most: Optional[float] = None) -> None:
    """Check that ``x`` is a floating point (with ``allow_bool`` also bool) ``torch.Tensor`` of
    ``shape`` (or with ``ndim`` dimensions) on ``device`` where given; unless bool, with
    ``finite`` its values are finite, with ``non_negative`` >= 0, with ``at_most`` in
    ``[0, at_most]``. ``desc`` describes the expected shape in messages (e.g. ``"[B, H, W]"``).

    Raises:
        NonFiniteError: NaN or inf (with ``finite``).
        ValueError: naming ``name``, for anything else.
    """
    kinds = "bool or floating point" if allow_bool else "floating point"
    if not (isinstance(x, Tensor) and (x.is_floating_point() or (allow_bool and x.dtype == torch.bool))
            and (shape is None or tuple(x.shape) == tuple(shape)) and (ndim is None or x.dim() == ndim)):
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a {kinds} torch.Tensor {desc}, got {got}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device}, the other inputs on {device}; use one device")
    if x.dtype == torch.bool or not finite:
        return
    if not all_finite(x):
        raise NonFiniteError(f"{name} contains NaN or inf")
    xd = x.detach()
    if (non_negative or at_most is not None) and xd.numel() and bool((xd < 0).any()):
        raise ValueError(f"{name} must be non-negative" if at_most is None else f"{name} values must lie in [0, {at_most:g}]")
    if at_most is not None and xd.numel() and bool((xd > at_most).any()):
        raise ValueError(f"{name} values must lie in [0, {at_most:g}]")


def check_tensor_list(values, name: str, desc: str, count: Optional[int] = None) -> None:
    """Check that ``values`` is a list or tuple of ``count`` (any number if None) tensors
    (``desc`` describes them in the message); their entries are checked by the caller.

    Raises:
        ValueError: naming ``name``.
    """
    if isinstance(values, Tensor) or not isinstance(values, (list, tuple)) or count not in (None, len(values)):
        got = f"{len(values)} entries" if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"{name} must be a list of {'' if count is None else f'{count} '}tensors {desc}, got {got}")
