"""Learnable cost calibration and pixel dropout in front of the AMWC layer of COPS.

Source: COPS (Abbas & Swoboda, NeurIPS 2021, Sec. 3.1) and the authors' code
(``panoptic_affinity/panoptic_seg_affinity.py``: ``seg_cost_weights``, ``edge_costs_weights`` and
``seg_dropout_layer``; ``utils.py``: ``DropoutPixels``). The network predicts semantic logits and cut logits (high = the two pixels
belong to different segments); the AMWC takes costs (low = preferred). The conversion has one
learnable scale and offset for the semantic costs and one per edge distance:

    c_V = -(a * semantic_logits + b)
    c_E = -(|a_d| * cut_logits_d + b_d)

(``|a_d|`` as in the COPS code, so that a larger cut logit always means a stronger preference for
cutting). In training the costs are regularised by dropout as in the COPS code: whole pixels of
the semantic costs (:class:`PixelDropout`) and single edge costs (:class:`EdgeDropout`), both
set to 0 without ``1 / (1 - p)`` rescaling. Pure PyTorch; no Detectron2 import.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..checks import as_float, as_int
from ._checks import check_tensor, check_tensor_list

__all__ = ["CostCalibration", "EdgeDropout", "PixelDropout"]


def _check_maps(maps, name: str, count=None, batch=None) -> None:
    """A list of ``count`` (any number if None) 4-D floating tensors ``[B, 2, H_d, W_d]``."""
    check_tensor_list(maps, name, "[B, 2, H_d, W_d], one per edge distance", count)
    for d, m in enumerate(maps):
        check_tensor(m, f"{name}[{d}]", "[B, 2, H_d, W_d]" + ("" if batch is None else f" with B = {batch}"), ndim=4,
                     finite=False)
        if batch is not None and (m.shape[0] != batch or m.shape[1] != 2):
            raise ValueError(f"{name}[{d}] must have shape [B, 2, H_d, W_d] with B = {batch}, got {list(m.shape)}")


class CostCalibration(nn.Module):
    """Learnable affine maps from network logits to AMWC costs (COPS Sec. 3.1).

    ``c_V = -(a * semantic_logits + b)`` and, per edge distance ``d``,
    ``c_E,d = -(|a_d| * cut_logits_d + b_d)``.

    Args:
        num_edge_distances: ``D >= 0``, number of edge-cost maps (edge distances).

    Parameters:
        semantic_weight (``a``, scalar, init 1), semantic_bias (``b``, scalar, init 0),
        edge_weight (``a_d``, ``[D]``, init 1), edge_bias (``b_d``, ``[D]``, init 0); all float32.

    Raises:
        ValueError: ``num_edge_distances`` not a non-negative integer.
    """

    def __init__(self, num_edge_distances: int) -> None:
        super().__init__()
        self.num_edge_distances = D = as_int(num_edge_distances, "num_edge_distances", 0)
        self.semantic_weight = nn.Parameter(torch.tensor(1.0))
        self.semantic_bias = nn.Parameter(torch.tensor(0.0))
        self.edge_weight = nn.Parameter(torch.ones(D))
        self.edge_bias = nn.Parameter(torch.zeros(D))

    def extra_repr(self) -> str:
        return f"num_edge_distances={self.num_edge_distances}"

    def forward(self, semantic_logits: Tensor, cut_logits: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """Convert logits to costs.

        Args:
            semantic_logits: ``[B, K, H, W]`` float, class logits on the stride-4 grid.
            cut_logits: list of ``D`` tensors ``[B, 2, H_d, W_d]`` float, cut (boundary) logits per
                edge distance (channel 0 along y, 1 along x).

        Returns:
            ``(semantic_costs [B, K, H, W], edge_costs list of [B, 2, H_d, W_d])`` in the inputs'
            dtypes, differentiable w.r.t. the inputs and the four parameters.

        Raises:
            ValueError: inputs not 4-D floating tensors, wrong number of cut-logit maps, batch
                sizes that differ.
        """
        check_tensor(semantic_logits, "semantic_logits", "[B, K, H, W]", ndim=4, finite=False)
        _check_maps(cut_logits, "cut_logits", self.num_edge_distances, semantic_logits.shape[0])
        a = self.semantic_weight.to(semantic_logits.dtype)
        b = self.semantic_bias.to(semantic_logits.dtype)
        # -(a * x + b) with one new tensor (the product; the sum and the sign in place: the
        # product is not saved for the backward, so autograd allows it), bitwise the same
        semantic_costs = (a * semantic_logits).add_(b).neg_()
        edge_costs = [
            (self.edge_weight[d].to(c.dtype).abs() * c).add_(self.edge_bias[d].to(c.dtype)).neg_()
            for d, c in enumerate(cut_logits)
        ]
        return semantic_costs, edge_costs


class _CostDropout(nn.Module):
    """What :class:`PixelDropout` and :class:`EdgeDropout` share: the drop probability ``p`` in
    ``[0, 1]`` and an optional ``torch.Generator`` (``ValueError`` otherwise)."""

    def __init__(self, p: float, generator: Optional[torch.Generator]) -> None:
        super().__init__()
        self.p = as_float(p, "p", 0.0)
        if self.p > 1.0:
            raise ValueError(f"p must be <= 1, got {self.p}")
        self.generator = self._check_generator(generator)

    @staticmethod
    def _check_generator(generator):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        return generator

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def _drop(self, x: Tensor, shape, g: Optional[torch.Generator]) -> Tensor:
        """``x`` times a keep mask of ``shape`` (broadcast to ``x``; 0 with probability ``p``), drawn
        on the device of ``g`` (of ``x`` without one) and moved to ``x``'s device and dtype."""
        keep = torch.rand(shape, generator=g, device=g.device if g is not None else x.device) >= self.p
        return x * keep.to(device=x.device, dtype=x.dtype)


class PixelDropout(_CostDropout):
    """Drop whole pixels of the semantic costs in training (COPS ``DropoutPixels``).

    In training mode each pixel of ``x [B, K, H, W]`` is, independently with probability ``p``,
    set to 0 in *all* ``K`` channels (no ``1 / (1 - p)`` rescaling, as in the COPS code: a pixel
    with all class costs 0 is left to its neighbours' edges). In eval mode the identity.

    Args:
        p: drop probability in ``[0, 1]``.
        generator: optional ``torch.Generator`` used for the drop mask (default: the global RNG
            of the mask's device); :meth:`forward` may override it per call.

    Raises:
        ValueError: ``p`` outside ``[0, 1]`` or not a number; ``generator`` not a Generator.
    """

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(p, generator)

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Apply pixel dropout.

        Args:
            x: ``[B, K, H, W]`` float (semantic costs).
            generator: overrides the constructor's generator for this call. The mask is drawn on
                the generator's device and moved to ``x``'s device.

        Returns:
            ``[B, K, H, W]``, ``x`` times a ``[B, 1, H, W]`` keep mask (training) or ``x`` (eval).

        Raises:
            ValueError: ``x`` not a 4-D floating tensor; bad generator.
        """
        check_tensor(x, "x", "[B, K, H, W]", ndim=4, finite=False)
        g = self._check_generator(generator) if generator is not None else self.generator
        if not self.training or self.p == 0.0:
            return x
        B, _, H, W = x.shape
        return self._drop(x, (B, 1, H, W), g)


class EdgeDropout(_CostDropout):
    """Drop single edge costs in training (the COPS code's edge-cost dropout).

    In training mode every entry of every edge-cost map ``[B, 2, H_d, W_d]`` is, independently
    with probability ``p``, set to 0 (an edge with cost 0 is neutral between joining and
    cutting); kept entries are unchanged. This is the authors'
    ``nn.Dropout(p)(c_E) * (1 - p)`` (``panoptic_seg_affinity.py``: the dropout's
    ``1 / (1 - p)`` rescaling undone). In eval mode the identity.

    Args:
        p: drop probability in ``[0, 1]`` (COPS: ``DROPOUT`` = 0.1).
        generator: optional ``torch.Generator`` for the drop masks (default: the global RNG of
            the maps' device); :meth:`forward` may override it per call.

    Raises:
        ValueError: ``p`` outside ``[0, 1]`` or not a number; ``generator`` not a Generator.
    """

    def __init__(self, p: float = 0.1, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(p, generator)

    def forward(self, edge_costs: Sequence[Tensor], generator: Optional[torch.Generator] = None) -> List[Tensor]:
        """Apply edge dropout.

        Args:
            edge_costs: list of ``[B, 2, H_d, W_d]`` float maps (one per edge distance).
            generator: overrides the constructor's generator for this call.

        Returns:
            list of maps of the same shapes: each times an independent ``{0, 1}`` keep mask
            (training), or the maps themselves (eval).

        Raises:
            ValueError: ``edge_costs`` not a list of 4-D floating tensors; bad generator.
        """
        _check_maps(edge_costs, "edge_costs")
        g = self._check_generator(generator) if generator is not None else self.generator
        if not self.training or self.p == 0.0:
            return list(edge_costs)
        return [self._drop(e, e.shape, g) for e in edge_costs]
