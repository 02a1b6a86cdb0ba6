"""The affinity (edge cost) head of COPS and its registry.

COPS (Abbas & Swoboda, NeurIPS 2021, Sec. 3.1 and Sec. 4 "Architecture") predicts, for every edge
distance ``d`` of the grid graph, a map of *cut logits* ``[B, 2, H_d, W_d]`` on the output-stride-4
grid: channel 0 scores the edges along rows (the y axis), channel 1 the edges along columns (the x
axis); a positive logit says the two pixels of the edge belong to different panoptic segments.
The map layout is the one of ``detectron2_cops.solvers.grid.GridGraph``: map position ``(a, b)``
is anchored at grid pixel ``(y, x) = (a * s, b * s)`` (``s`` = the distance's sampling interval),
channel 0 joins ``(y - lo, x)`` and ``(y + hi, x)``, channel 1 joins ``(y, x - lo)`` and
``(y, x + hi)`` with ``(lo, hi) = edge_offsets(d)``.

Architecture (the original COPS ``PanopticAffinityInsEmbedHead``):

1. its own DeepLabV3+ decoder (Detectron2's ``DeepLabV3PlusHead``, decoder only);
2. the semantic logits (detached) are concatenated to the decoder output;
3. a head of two 3x3 convs to ``head_channels``;
4. one classifier per distance: two 3x3 conv + norm + ReLU (``head_channels / 4`` then
   ``head_channels / 8`` channels per group) and a dense 1x1 conv (with bias) to the 2 cut-logit
   channels, applied to the ``[::s, ::s]`` subsampled features (the original's stride-``s`` 1x1
   conv). For ``d = 1`` it sees the head features directly (one group). For ``d > 1`` it sees
   the *centred feature differences* along each axis (``centered_difference``), concatenated
   ``[rows, columns]``; the two 3x3 convs are grouped (2 groups: row differences, column
   differences) and the 1x1 predictor mixes both groups (weight ``[2, head_channels / 4, 1, 1]``),
   exactly as the original (``in_factor = 2``, ``Conv2d(in_factor * head_channels / 8, 2, 1)``).
   All convs c2-Xavier initialised as the original.

Parameter for parameter this is the authors' head: ``decoder.*`` as theirs,
``head.{0,1}`` = their ``affinity_head.{0,1}``, ``classifiers.{i}.convs.{0,1}`` = their
``classifiers.{i}.{0,1}``, ``classifiers.{i}.predictor`` = their ``classifiers.{i}.2``
(see ``tools/convert_cops_checkpoint.py``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Union

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.projects.deeplab import DeepLabV3PlusHead
from detectron2.utils.registry import Registry

from ..checks import as_choice, as_int_list
from ..solvers.grid import edge_offsets
from .sem_seg_head import conv3x3_head, deeplab_head_config

__all__ = ["AFFINITY_HEAD_REGISTRY", "AffinityHead", "build_affinity_head"]

_LOSS_NORMALIZATIONS = ("per_channel_mean", "weight_sum")

AFFINITY_HEAD_REGISTRY = Registry("AFFINITY_HEAD")
AFFINITY_HEAD_REGISTRY.__doc__ = """
Registry for COPS affinity heads, which predict edge cut logits of the grid graph from backbone
features and semantic logits.

The registered object is called with ``obj(cfg, input_shape)`` (``input_shape``: backbone output
name -> ``ShapeSpec``) and must return an ``nn.Module`` whose
``forward(features, sem_seg_logits, targets=None, weights=None)`` returns
``(List[[B, 2, H_d, W_d] cut logits], dict of losses)``, one map per ``EDGE_DISTANCES`` entry in
the ``detectron2_cops.solvers.GridGraph`` convention.
"""


def build_affinity_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the affinity head named by ``cfg.MODEL.AFFINITY_HEAD.NAME`` from
    ``AFFINITY_HEAD_REGISTRY``. Raises ``KeyError`` (from the registry) for an unknown name."""
    return AFFINITY_HEAD_REGISTRY.get(cfg.MODEL.AFFINITY_HEAD.NAME)(cfg, input_shape)


def centered_difference(features: torch.Tensor, distance: int, axis: int) -> torch.Tensor:
    """Feature difference across the edges of one distance, at the edges' anchor pixels (the
    classifier input of :class:`AffinityHead`; an internal helper, its arguments are trusted).

    For ``axis = 0`` (edges along rows / y, edge-map channel 0) the output at ``(y, x)`` is
    ``features[..., y + hi, x] - features[..., y - lo, x]`` with ``(lo, hi) = edge_offsets(distance)``
    (the ``GridGraph`` convention, ``detectron2_cops/solvers/grid.py``), and 0 where
    ``y - lo < 0`` or ``y + hi > H - 1`` (the edge leaves the grid). ``axis = 1`` does the same
    along x (edge-map channel 1). ``features``: ``[B, C, H, W]`` float on the stride-4 grid;
    ``distance``: ``d >= 1`` in grid pixels. Returns a differentiable ``[B, C, H, W]`` tensor of
    the same dtype and device.
    """
    d = distance
    lo, hi = edge_offsets(d)
    dim = 2 + axis
    n = features.shape[dim]
    if n <= d:
        # No edge of this distance fits in the grid along this axis.
        return torch.zeros_like(features)
    diff = features.narrow(dim, d, n - d) - features.narrow(dim, 0, n - d)
    # Output index y = j + lo holds f[j + d] - f[j] = f[y + hi] - f[y - lo].
    pad = (0, 0, lo, hi) if axis == 0 else (lo, hi, 0, 0)
    return F.pad(diff, pad)


@AFFINITY_HEAD_REGISTRY.register()
class AffinityHead(DeepLabV3PlusHead):
    """COPS affinity head: per-distance edge cut logits on the stride-4 grid (see module docstring).

    Loss (pretraining stage, COPS Sec. 4): the binary cross entropy with logits between the cut
    logits and the cut targets (1 = the two pixels lie in different panoptic segments), times
    the per-edge weights, ``l = BCE(x, t) * w``. Normalisation (``loss_normalization``,
    ``MODEL.AFFINITY_HEAD.LOSS_NORMALIZATION``):

    * ``"per_channel_mean"`` (default, the original: ``compute_affinity_loss`` in the authors'
      ``panoptic_seg_affinity.py``): for each distance ``d`` and each channel ``c`` (0 rows,
      1 columns) separately, over *all* ``N = B * H_d * W_d`` positions of that channel (weight-0
      positions included), keep the ``k = int(loss_top_k * N)`` largest ``l`` (all when
      ``loss_top_k = 1``) and take their plain mean ``sum(kept) / k``; the loss of distance ``d``
      is ``loss_weight * (mean_c0 + mean_c1)`` (the original logs the two channel terms
      separately, their sum is the same total).
    * ``"weight_sum"`` (a departure, the earlier behaviour of this project): per distance, over
      the edges with weight > 0 of both channels, keep the ``loss_top_k`` fraction with the
      largest ``l`` and divide their sum by the sum of their weights.

    One loss per distance, ``"loss_affinity_d{d}"``.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        decoder_channels: List[int],
        norm: Union[str, Callable],
        head_channels: int,
        num_sem_seg_classes: int,
        edge_distances: Sequence[int],
        edge_sampling_intervals: Sequence[int],
        loss_weight: float,
        loss_top_k: float,
        loss_normalization: str = "per_channel_mean",
        **kwargs,
    ):
        """
        Args:
            input_shape, decoder_channels, norm, **kwargs: the decoder's arguments, as
                :class:`~detectron2_cops.modeling.sem_seg_head.COPSSemSegHead`.
            head_channels: channels of the head and classifier input; a multiple of 8.
            num_sem_seg_classes: K, channels of the semantic logits concatenated to the decoder.
            edge_distances: distances ``d`` in stride-4 grid pixels, distinct, e.g. [1, 4, 16, 32, 64].
            edge_sampling_intervals: one sampling interval ``s >= 1`` per distance.
            loss_weight: weight of the affinity loss; 0 disables it (``losses`` returns ``{}``).
            loss_top_k: fraction in ``(0, 1]`` of the hardest weighted edges that are kept.
            loss_normalization: ``"per_channel_mean"`` (the original) or ``"weight_sum"`` (see
                the class docstring).

        The values are checked where they are read from the config (:meth:`from_config`).
        """
        # num_classes is not passed on: the base class builds the decoder only.
        super().__init__(input_shape, decoder_channels=decoder_channels, norm=norm, **kwargs)
        assert self.decoder_only

        self.edge_distances = list(edge_distances)
        self.edge_sampling_intervals = list(edge_sampling_intervals)
        self.num_sem_seg_classes = int(num_sem_seg_classes)
        self.loss_weight = float(loss_weight)
        self.loss_top_k = float(loss_top_k)
        self.loss_normalization = loss_normalization
        # Head on [decoder features, detached semantic logits].
        self.head = conv3x3_head(decoder_channels[0] + self.num_sem_seg_classes, decoder_channels[0], head_channels, norm)
        self.classifiers = nn.ModuleList()
        for d in self.edge_distances:
            # d = 1: one group on the features; d > 1: two groups, [row diffs, column diffs].
            groups = 1 if d == 1 else 2
            c1, c2 = groups * (head_channels // 4), groups * (head_channels // 8)
            classifier = conv3x3_head(groups * head_channels, c1, c2, norm, groups=groups)
            # Dense over both groups (weight [2, c2, 1, 1]), as the original classifier's last conv.
            predictor = Conv2d(c2, 2, kernel_size=1, bias=True)
            weight_init.c2_xavier_fill(predictor)
            self.classifiers.append(nn.ModuleDict({"convs": classifier, "predictor": predictor}))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """Read ``MODEL.AFFINITY_HEAD.*`` (the keys of
        :func:`~detectron2_cops.modeling.sem_seg_head.deeplab_head_config`, ``EDGE_DISTANCES``,
        ``EDGE_SAMPLING_INTERVALS``, ``LOSS_NORMALIZATION``) and ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``
        (checked by the semantic head).

        Raises:
            ValueError: naming the key: as ``deeplab_head_config``; ``HEAD_CHANNELS`` not a
                multiple of 8; ``EDGE_DISTANCES`` empty, not distinct or not positive integers,
                ``EDGE_SAMPLING_INTERVALS`` not one positive integer per distance;
                ``LOSS_NORMALIZATION`` not ``"per_channel_mean"`` or ``"weight_sum"``.
        """
        head = cfg.MODEL.AFFINITY_HEAD
        ret = deeplab_head_config(cfg, input_shape, "AFFINITY_HEAD")
        if ret["head_channels"] % 8:
            raise ValueError(f"MODEL.AFFINITY_HEAD.HEAD_CHANNELS must be a multiple of 8, got {ret['head_channels']}")
        distances = as_int_list(head.EDGE_DISTANCES, "MODEL.AFFINITY_HEAD.EDGE_DISTANCES", 1)
        intervals = as_int_list(head.EDGE_SAMPLING_INTERVALS, "MODEL.AFFINITY_HEAD.EDGE_SAMPLING_INTERVALS", 1)
        if not distances or len(set(distances)) != len(distances) or len(intervals) != len(distances):
            raise ValueError(
                "MODEL.AFFINITY_HEAD.EDGE_DISTANCES must be distinct (at least one) and "
                f"EDGE_SAMPLING_INTERVALS hold one entry per edge distance, got {distances} and {intervals}"
            )
        normalization = as_choice(head.LOSS_NORMALIZATION, "MODEL.AFFINITY_HEAD.LOSS_NORMALIZATION",
                                  _LOSS_NORMALIZATIONS)
        return dict(
            ret,
            num_sem_seg_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            edge_distances=distances,
            edge_sampling_intervals=intervals,
            loss_normalization=normalization,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, features: Dict[str, torch.Tensor], sem_seg_logits: torch.Tensor, targets=None, weights=None):
        """``(logits, losses)``: :meth:`layers` of the backbone ``features`` and the ``[B, K, h, w]``
        semantic logits (detached inside) and, given ``targets`` (one ``[B, 2, H_d, W_d]`` float map
        per distance) and optional ``weights`` (default: all 1), :meth:`losses`."""
        logits = self.layers(features, sem_seg_logits)
        if targets is None:
            return logits, {}
        if weights is None:
            weights = [torch.ones_like(t, dtype=logits[0].dtype) for t in targets]
        return logits, self.losses(logits, targets, weights)

    def difference_features(self, head_features: torch.Tensor, distance: int) -> torch.Tensor:
        """Classifier input for one distance: the head features for ``d = 1``, else
        ``cat([centered_difference(f, d, 0), centered_difference(f, d, 1)], 1)``
        (``[B, 2C, h, w]``)."""
        if distance == 1:
            return head_features
        return torch.cat([centered_difference(head_features, distance, axis) for axis in (0, 1)], dim=1)

    def layers(self, features: Dict[str, torch.Tensor], sem_seg_logits: torch.Tensor) -> List[torch.Tensor]:
        """Cut logits, one ``[B, 2, ceil(h / s), ceil(w / s)]`` map per distance (``h, w``: the
        decoder output size, i.e. the stride-4 grid); ``sem_seg_logits`` ``[B, K, h, w]``."""
        y = super().layers(features)
        f = self.head(torch.cat([y, sem_seg_logits.detach().to(y.dtype)], dim=1))

        out = []
        for d, s, clf in zip(self.edge_distances, self.edge_sampling_intervals, self.classifiers):
            x = clf["convs"](self.difference_features(f, d))
            if s > 1:
                x = x[:, :, ::s, ::s]
            out.append(clf["predictor"](x))
        return out

    # ------------------------------------------------------------------ loss
    def losses(self, logits: List[torch.Tensor], targets: List[torch.Tensor], weights: List[torch.Tensor]):
        """Weighted binary cross entropy on the cut logits (see the class docstring).

        Args:
            logits: one ``[B, 2, H_d, W_d]`` float map per distance.
            targets: same shapes, float in ``[0, 1]`` (1 = cut).
            weights: same shapes, float ``>= 0``; edges with weight 0 (invalid map positions,
                ignored regions) do not contribute.
        Returns:
            ``{"loss_affinity_d{d}": scalar}`` per distance, or ``{}`` when ``loss_weight`` is 0.
        """
        if self.loss_weight == 0.0:
            return {}
        losses = {}
        for d, x, t, w in zip(self.edge_distances, logits, targets, weights):
            t, w = t.to(x.dtype), w.to(x.dtype)
            edge_losses = F.binary_cross_entropy_with_logits(x, t, reduction="none") * w
            if self.loss_normalization == "per_channel_mean":
                loss = sum(self._channel_mean(edge_losses[:, c]) for c in range(2))
            elif self.loss_top_k < 1.0:
                mask = w > 0
                vals = edge_losses[mask]
                k = min(max(int(self.loss_top_k * vals.numel()), 1), vals.numel())
                kept, idx = torch.topk(vals, k)
                loss = kept.sum() / w[mask][idx].sum().clamp(min=1e-12)
            else:
                loss = edge_losses.sum() / w.sum().clamp(min=1e-12)
            # With no weighted edge the loss is an exact 0 that keeps the graph.
            losses[f"loss_affinity_d{d}"] = loss * self.loss_weight
        return losses

    def _channel_mean(self, channel_losses: torch.Tensor) -> torch.Tensor:
        """Original normalisation of one channel's ``[B, H_d, W_d]`` weighted losses: mean of the
        ``int(loss_top_k * numel)`` largest values over all positions (all when ``loss_top_k``
        is 1; at least one when the map is not empty; an empty map gives an exact 0)."""
        flat = channel_losses.reshape(-1)
        if flat.numel() == 0:
            return flat.sum()
        if self.loss_top_k < 1.0:
            k = max(int(self.loss_top_k * flat.numel()), 1)
            flat = torch.topk(flat, k)[0]
        return flat.mean()
