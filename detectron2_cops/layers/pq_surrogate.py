"""Differentiable panoptic-quality surrogate of COPS and the segment matching it uses.

Source: Abbas & Swoboda, "Combinatorial Optimization for Panoptic Segmentation: A Fully
Differentiable Approach", NeurIPS 2021, "Contribution 2: optimize panoptic quality surrogate"
(slides; ``shared/reference/cops-slides.txt`` beside this repository) and the authors' code
(``panoptic_affinity/losses.py``: ``iou_batch``, ``PanopticQualityLoss``; ``utils.py``:
``MatchMasksPair``; ``panoptic_seg_affinity.py``: ``compute_foreground_probabilities``). The
exact definitions used here are listed in :class:`PanopticQualitySurrogate`.

Pure PyTorch + SciPy (``scipy.optimize.linear_sum_assignment``); no Detectron2 import.
"""
from __future__ import annotations

import math
import numbers
import operator
from collections import abc
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = ["PanopticQualitySurrogate", "SurrogateOutput", "match_segments"]


class SurrogateOutput(NamedTuple):
    """Result of :class:`PanopticQualitySurrogate`.

    Attributes:
        loss: scalar tensor ``1 - pq`` (differentiable w.r.t. the predicted masks).
        pq: scalar tensor, the surrogate PQ~ averaged over the classes of the batch.
        per_class: ``{class_id: PQ~_c}`` (Python floats) of the classes that were averaged.
        matches: one list per image of ``(pred_index, gt_index)`` matched pairs.
    """

    loss: Tensor
    pq: Tensor
    per_class: Dict[int, float]
    matches: List[List[Tuple[int, int]]]


# ----------------------------------------------------------------------------- input checks
def _check_number(value, name: str, *, positive: bool = False, non_negative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _as_index(value, name: str, what: str) -> int:
    """``value`` as a Python int (``operator.index``); ``ValueError`` "``name`` must be ``what``"
    for bools and non-integers."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r}") from None


def _as_sequence(value, name: str, what: str):
    """``value`` as a sequence: a list, tuple or other non-string sequence as it is, a tensor or
    array as its ``tolist()``; ValueError for anything else (e.g. None)."""
    if isinstance(value, (Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, abc.Sequence):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def _thing_set(thing_classes: Iterable[int]) -> Set[int]:
    if isinstance(thing_classes, Tensor):
        thing_classes = thing_classes.tolist()
    out = set()
    for i, c in enumerate(thing_classes):
        c = _as_index(c, f"thing_classes[{i}]", "an integer class id")
        if c < 0:
            raise ValueError(f"thing_classes[{i}] must be >= 0, got {c}")
        out.add(c)
    return out


def _check_masks(x, name: str, *, allow_bool: bool) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [N, H, W], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be 3-D [N, H, W], got shape {tuple(x.shape)}")
    if x.dtype == torch.bool:
        if not allow_bool:
            raise ValueError(f"{name} must be a floating point tensor, got {x.dtype}")
        return
    if not x.is_floating_point():
        kinds = "bool or floating point" if allow_bool else "floating point"
        raise ValueError(f"{name} must be a {kinds} tensor, got {x.dtype}")
    if x.numel() > 0:
        xd = x.detach()
        if not bool(torch.isfinite(xd).all()):
            raise ValueError(f"{name} contains NaN or inf")
        if bool((xd < 0).any()) or bool((xd > 1).any()):
            raise ValueError(f"{name} values must lie in [0, 1]")


def _check_classes(x, name: str, n: int) -> List[int]:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be an int64 torch.Tensor [{n}], got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer (int64) tensor, got {x.dtype}")
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] (one class per mask), got {tuple(x.shape)}")
    values = [int(v) for v in x.tolist()]
    if any(v < 0 for v in values):
        raise ValueError(f"{name} contains negative class ids: {values}")
    return values


def _check_weights(x, name: str, hw: Tuple[int, int]) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [H, W], got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {x.dtype}")
    if tuple(x.shape) != tuple(hw):
        raise ValueError(f"{name} must have shape [H, W] = {list(hw)}, got {list(x.shape)}")
    xd = x.detach()
    if not bool(torch.isfinite(xd).all()):
        raise ValueError(f"{name} contains NaN or inf")
    if bool((xd < 0).any()):
        raise ValueError(f"{name} must be non-negative")


def _check_image(pred_masks, pred_classes, gt_masks, gt_classes, pixel_weights, where: str):
    """Validate one image's inputs; return (pred_cls list, gt_cls list)."""
    _check_masks(pred_masks, f"pred_masks{where}", allow_bool=False)
    _check_masks(gt_masks, f"gt_masks{where}", allow_bool=True)
    hw = tuple(pred_masks.shape[1:])
    if tuple(gt_masks.shape[1:]) != hw:
        raise ValueError(
            f"gt_masks{where} spatial size {list(gt_masks.shape[1:])} differs from "
            f"pred_masks{where} {list(hw)}"
        )
    if pixel_weights is not None:
        _check_weights(pixel_weights, f"pixel_weights{where}", hw)
    pred_cls = _check_classes(pred_classes, f"pred_classes{where}", pred_masks.shape[0])
    gt_cls = _check_classes(gt_classes, f"gt_classes{where}", gt_masks.shape[0])
    return pred_cls, gt_cls


# ----------------------------------------------------------------------------- core pieces
def _weighted_overlaps(pred: Tensor, gt: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weighted soft intersection and union ``[M, G]`` and weighted areas ``[M]``, ``[G]``.

    ``inter[m, g] = sum_x w(x) p_m(x) g_g(x)``, ``union[m, g] = sum_x w(x) (p_m + g_g - p_m g_g)``
    (``iou_batch`` of the COPS code), computed with two matrix products; ``area_p[m] = sum_x w
    p_m``, ``area_g[g] = sum_x w g_g`` (the union of a mask with an empty counterpart).
    """
    pf = pred.flatten(1)  # [M, HW]
    wf = weights.reshape(-1)  # [HW]
    gwf = gt.flatten(1) * wf  # [G, HW]
    inter = pf @ gwf.transpose(0, 1)  # [M, G]
    area_p = pf @ wf  # [M]
    area_g = gwf.sum(1)  # [G]
    union = area_p[:, None] + area_g[None, :] - inter
    return inter, union, area_p, area_g


def _assign(
    inter: np.ndarray,
    union: np.ndarray,
    pred_cls: Sequence[int],
    gt_cls: Sequence[int],
    things: Set[int],
    eps: float,
    match_zero_overlap: bool = True,
) -> List[Tuple[int, int]]:
    """Per-class maximum-IoU bipartite matching on (no-grad) float64 overlap matrices.

    ``match_zero_overlap`` (the COPS ``MatchMasksPair``): every thing pair competes with its
    eps-smoothed IoU, so ``min(M_c, G_c)`` pairs are matched per class even without overlap;
    False: thing pairs without overlap get score 0 and are never matched."""
    pairs: List[Tuple[int, int]] = []
    pred_arr = np.asarray(pred_cls, dtype=np.int64)
    gt_arr = np.asarray(gt_cls, dtype=np.int64)
    for c in sorted(set(pred_cls) & set(gt_cls)):
        pi = np.nonzero(pred_arr == c)[0]
        gi = np.nonzero(gt_arr == c)[0]
        sub_inter = inter[np.ix_(pi, gi)]
        score = (sub_inter + eps) / (union[np.ix_(pi, gi)] + eps)
        is_thing = c in things and not match_zero_overlap
        if is_thing:
            # Pairs that do not overlap are never matched (and must not compete in the assignment).
            score = np.where(sub_inter > 0, score, 0.0)
        rows, cols = linear_sum_assignment(score, maximize=True)
        for r, k in zip(rows.tolist(), cols.tolist()):
            if is_thing and not sub_inter[r, k] > 0:
                continue
            pairs.append((int(pi[r]), int(gi[k])))
    pairs.sort()
    return pairs


def match_segments(
    pred_masks: Tensor,
    pred_classes: Tensor,
    gt_masks: Tensor,
    gt_classes: Tensor,
    pixel_weights: Optional[Tensor],
    thing_classes: Iterable[int],
    eps: float = 0.1,
    match_zero_overlap: bool = True,
) -> List[Tuple[int, int]]:
    """Match the predicted to the ground-truth segments of one image, class by class.

    For every class present on both sides, the segments of that class are matched by
    maximum-IoU bipartite matching (``scipy.optimize.linear_sum_assignment(..., maximize=True)``,
    as ``MatchMasksPair`` in the COPS code) on the soft, pixel-weighted IoU
    ``(sum w p g + eps) / (sum w (p + g - p g) + eps)`` computed without gradient.

    * Thing classes, ``match_zero_overlap=True`` (default; the COPS ``MatchMasksPair``,
      ``utils.py`` ~215-237): every pair competes with its eps-smoothed IoU, so
      ``min(M_c, G_c)`` pairs of class ``c`` are matched, also pairs that do not overlap.
    * Thing classes, ``match_zero_overlap=False``: pairs whose weighted intersection
      ``sum w p g`` is 0 get score 0 and are never returned.
    * Stuff classes: normally one segment per class on each side, matched by class whatever
      their overlap; if a stuff class has several segments on a side, the same assignment is
      used and every assigned pair is kept.

    Args:
        pred_masks: ``[M, H, W]`` float, values in [0, 1] (pixels of the mask's grid).
        pred_classes: ``[M]`` integer (int64) contiguous class ids, >= 0.
        gt_masks: ``[G, H, W]`` bool or float in [0, 1], same ``H, W``.
        gt_classes: ``[G]`` integer (int64) class ids, >= 0.
        pixel_weights: ``[H, W]`` float >= 0 (0 = ignored pixel) or None (all ones).
        thing_classes: class ids that are things; all others are stuff.
        eps: > 0, smoothing of the IoU (0.1 in the COPS code).
        match_zero_overlap: see above.

    Returns:
        Sorted list of ``(pred_index, gt_index)``; each index appears at most once.

    Raises:
        ValueError: non-tensors, masks not 3-D or of the wrong dtype, ``H, W`` mismatch between
            masks and weights, class tensors of the wrong length/dtype or negative, NaN/inf or
            values outside [0, 1] in masks, negative or non-finite weights, ``eps <= 0``.
    """
    eps = _check_number(eps, "eps", positive=True)
    things = _thing_set(thing_classes)
    pred_cls, gt_cls = _check_image(pred_masks, pred_classes, gt_masks, gt_classes, pixel_weights, "")
    with torch.no_grad():
        p = pred_masks.detach().to(torch.float64)
        g = gt_masks.detach().to(device=p.device, dtype=torch.float64)
        if pixel_weights is None:
            w = torch.ones(p.shape[1:], dtype=torch.float64, device=p.device)
        else:
            w = pixel_weights.detach().to(device=p.device, dtype=torch.float64)
        inter, union, _, _ = _weighted_overlaps(p, g, w)
    return _assign(inter.cpu().numpy(), union.cpu().numpy(), pred_cls, gt_cls, things, eps,
                   bool(match_zero_overlap))


_RULES = ("original", "pq")


class PanopticQualitySurrogate(nn.Module):
    """Differentiable surrogate of panoptic quality (COPS, NeurIPS 2021, contribution 2).

    For each class ``c`` present in the batch (in the ground truth or the predictions)::

        PQ~_c = (sum_TP h(IoU) s(p) IoU + ratio_eps)
                / (TP~ + 0.5 (FP~ + FN~) + ratio_eps)

    with numerator and denominator summed over all images of the batch before the ratio, and
    ``PQ~ = mean_c PQ~_c``, ``loss = 1 - PQ~``. Classes whose denominator (before
    ``ratio_eps``) is exactly 0 are left out of the mean, as in the COPS code. Definitions:

    * soft IoU with pixel weights ``w`` (0 on ignore regions):
      ``IoU = (sum w p g + eps) / (sum w (p + g - p g) + eps)``, ``eps = 0.1`` (``iou_batch``,
      ``losses.py`` ~11-18);
    * soft threshold at 0.5: ``h(u) = u^beta / (u^beta + (1 - u)^beta)``, ``beta = 4``;
    * foreground probability ``s(p) = sigmoid(area_temperature * (area(p) - min_area))``,
      ``area(p) = sum_x p(x)`` (unweighted, pixels of the masks' grid), ``min_area`` =
      ``instance_area`` for thing classes and ``stuff_area`` for stuff classes
      (``compute_foreground_probabilities``, ``panoptic_seg_affinity.py`` ~135-160; in the grid
      units the caller passes: the COPS code uses ``INSTANCE_AREA / 4`` and
      ``STUFF_AREA / 4 / 4`` grid pixels in training);
    * matching: :func:`match_segments` (per-class maximum-IoU assignment, stuff by class;
      ``match_zero_overlap``);
    * ``ratio_eps``: default 0.1 as the COPS code (``PanopticQualityLoss(eps=1e-1)``); with it a
      class seen only as false positives has ``PQ~_c = ratio_eps / (FP~ / 2 + ratio_eps)`` and
      gives a gradient that shrinks ``s(p)`` and the masks; with 0 such a class has ``PQ~_c = 0``
      and no gradient.

    Two counting rules (``rule``):

    * ``"original"`` (default; ``PanopticQualityLoss.forward``, ``losses.py`` ~24-101, with the
      ground truth of ``ComputeBestGroundTruth``, ``utils.py`` ~163-213): every segment is in one
      pair ``(p, g)``: matched pairs; an unmatched prediction with an *empty* ground truth; an
      unmatched ground truth with an *empty* prediction (a padded mask: the ``padded_gt``
      masks of :meth:`forward`, or, where the caller gave none, a constant zero mask). With
      ``nz = [g is not empty]`` each pair adds ``h s nz IoU`` to the numerator, ``h s nz`` to
      TP~, ``(1 - h) nz`` to FN~ and ``(1 - nz) (1 - h) s`` to FP~. A matched pair below IoU 0.5
      thus counts as a (soft) false negative only, an unmatched prediction as
      ``(1 - h(eps / (area_w(p) + eps))) s(p)`` false positives.
    * ``"pq"``: the counts of Kirillov et al.'s PQ, softened: a matched pair adds ``t = h s``
      to TP~ (``t IoU`` to the numerator), ``(1 - h) s`` to FP~ and ``1 - h`` to FN~; an
      unmatched prediction adds ``s`` to FP~, an unmatched ground truth 1 to FN~. With hard
      masks, IoUs in {0, 1}, ``s = 1`` and ``ratio_eps = 0`` this is exactly PQ (give crowd and
      void pixels weight 0 and leave crowd segments out of the ground truth). Padded masks
      count as the predictions of their ground truth.

    If no class remains (e.g. no ground truth and no predictions anywhere) the loss is
    ``0 * sum(masks)`` (zero, but connected to the inputs so ``backward`` works) and
    ``pq = 1 - loss``.

    Args:
        thing_classes: class ids that are things (others are stuff).
        stuff_area: minimum stuff segment area, in pixels of the masks' grid.
        instance_area: minimum instance (thing) area, in pixels of the masks' grid.
        eps: IoU smoothing, > 0.
        beta: soft-threshold sharpness, > 0.
        area_temperature: slope of the foreground sigmoid, > 0 (per pixel).
        ratio_eps: >= 0, see above.
        rule: ``"original"`` or ``"pq"``, see above.
        match_zero_overlap: thing pairs without overlap may be matched (see
            :func:`match_segments`; the COPS code: True).

    Raises:
        ValueError: on bad constructor arguments (non-finite numbers, non-positive ``eps``,
            ``beta`` or ``area_temperature``, negative ``ratio_eps``, negative thing ids, an
            unknown rule), and in ``forward`` on bad inputs (see :meth:`forward`).
    """

    def __init__(
        self,
        thing_classes: Sequence[int],
        *,
        stuff_area: float,
        instance_area: float,
        eps: float = 0.1,
        beta: float = 4.0,
        area_temperature: float = 0.1,
        ratio_eps: float = 0.1,
        rule: str = "original",
        match_zero_overlap: bool = True,
    ) -> None:
        super().__init__()
        self.thing_classes = frozenset(_thing_set(thing_classes))
        self.stuff_area = _check_number(stuff_area, "stuff_area")
        self.instance_area = _check_number(instance_area, "instance_area")
        self.eps = _check_number(eps, "eps", positive=True)
        self.beta = _check_number(beta, "beta", positive=True)
        self.area_temperature = _check_number(area_temperature, "area_temperature", positive=True)
        self.ratio_eps = _check_number(ratio_eps, "ratio_eps", non_negative=True)
        if rule not in _RULES:
            raise ValueError(f"rule must be one of {list(_RULES)}, got {rule!r}")
        self.rule = rule
        if not isinstance(match_zero_overlap, (bool, np.bool_)):
            raise ValueError(f"match_zero_overlap must be a bool, got {match_zero_overlap!r}")
        self.match_zero_overlap = bool(match_zero_overlap)

    def extra_repr(self) -> str:
        return (
            f"thing_classes={sorted(self.thing_classes)}, stuff_area={self.stuff_area}, "
            f"instance_area={self.instance_area}, eps={self.eps}, beta={self.beta}, "
            f"area_temperature={self.area_temperature}, ratio_eps={self.ratio_eps}, "
            f"rule={self.rule!r}, match_zero_overlap={self.match_zero_overlap}"
        )

    def soft_threshold(self, iou: Tensor) -> Tensor:
        """``h(u) = u^beta / (u^beta + (1 - u)^beta)``: soft step at 0.5 (COPS ``soft_threshold``)."""
        a = iou.pow(self.beta)
        return a / (a + (1.0 - iou).clamp_min(0.0).pow(self.beta))

    def foreground_probability(self, areas: Tensor, classes: Sequence[int]) -> Tensor:
        """``s(p) = sigmoid(area_temperature * (area - min_area(class)))`` for ``areas [M]``."""
        limits = torch.tensor(
            [self.instance_area if c in self.thing_classes else self.stuff_area for c in classes],
            dtype=areas.dtype,
            device=areas.device,
        )
        return torch.sigmoid(self.area_temperature * (areas - limits))

    def match(
        self,
        pred_masks: Tensor,
        pred_classes: Tensor,
        gt_masks: Tensor,
        gt_classes: Tensor,
        pixel_weights: Optional[Tensor] = None,
    ) -> List[Tuple[int, int]]:
        """The matching of one image that :meth:`forward` uses (:func:`match_segments` with this
        module's ``eps`` and ``match_zero_overlap``); no gradient. Raises ``ValueError`` on bad
        inputs as :func:`match_segments`."""
        return match_segments(pred_masks, pred_classes, gt_masks, gt_classes, pixel_weights,
                              self.thing_classes, self.eps, self.match_zero_overlap)

    def unmatched_gt(
        self,
        pred_masks: Tensor,
        pred_classes: Tensor,
        gt_masks: Tensor,
        gt_classes: Tensor,
        pixel_weights: Optional[Tensor] = None,
        pairs: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> List[int]:
        """Indices (ascending) of the ground-truth segments of one image that the matching
        (:meth:`match`, or the given ``pairs``) leaves unmatched: the segments for which the COPS
        code pads an empty prediction (``ComputeBestGroundTruth``, ``utils.py`` ~163-213)."""
        if pairs is None:
            pairs = self.match(pred_masks, pred_classes, gt_masks, gt_classes, pixel_weights)
        G = gt_masks.shape[0]
        matched = set()
        for k, pair in enumerate(_as_sequence(pairs, "pairs", "a sequence of (pred_index, gt_index) pairs")):
            what = "a (pred_index, gt_index) pair of integers"
            try:
                _, j = pair
            except (TypeError, ValueError):
                raise ValueError(f"pairs[{k}] must be {what}, got {pair!r}") from None
            j = _as_index(j, f"pairs[{k}]", what)
            if not 0 <= j < G:
                raise ValueError(f"pairs[{k}] names ground truth {j}, out of range [0, {G})")
            matched.add(j)
        return [j for j in range(gt_masks.shape[0]) if j not in matched]

    def forward(
        self,
        pred_masks: List[Tensor],
        pred_classes: List[Tensor],
        gt_masks: List[Tensor],
        gt_classes: List[Tensor],
        pixel_weights: Optional[List[Tensor]] = None,
        padded_gt: Optional[List[Sequence[int]]] = None,
        matches: Optional[List[Sequence[Tuple[int, int]]]] = None,
    ) -> SurrogateOutput:
        """Compute the surrogate PQ and the loss ``1 - PQ~`` for a batch of images.

        Args:
            pred_masks: per image ``[M_b, H_b, W_b]`` float (float32/float64; float16 and
                bfloat16 are computed in float32) in [0, 1],
                typically hard 0/1 masks from the AMWC layer with ``requires_grad``; ``M_b`` may
                be 0. Units: pixels of the grid the masks live on (stride-4 grid in training).
            pred_classes: per image ``[M_b]`` int64 contiguous class ids (>= 0).
            gt_masks: per image ``[G_b, H_b, W_b]`` bool or float in [0, 1]; ``G_b`` may be 0.
            gt_classes: per image ``[G_b]`` int64 class ids (>= 0).
            pixel_weights: per image ``[H_b, W_b]`` float >= 0 (0 = ignore), default all ones.
            padded_gt: optional, per image the ground-truth indices ``j_1 .. j_P`` that the
                *last* ``P`` masks of ``pred_masks[b]`` stand for (padded, normally empty masks
                of the AMWC layer, ``AMWCLayer(pad_fn=...)``): they must be exactly ground
                truths left unmatched by the matching of the other masks
                (:meth:`unmatched_gt`), with their classes. Each padded mask is paired with its
                ground truth (COPS ``ComputeBestGroundTruth``), so its loss gradient exists.
            matches: optional, per image the ``(pred_index, gt_index)`` pairs of the non-padded
                masks, precomputed with :meth:`match` (e.g. by the ``pad_fn`` that chose the
                padded masks, so that both use one matching); default: computed here.

        All images' ``pred_masks`` must share one dtype and device; all computation runs there,
        in that dtype (float32 for half precision; ground truth, classes and weights are moved
        there); only the no-grad ``[M_b, G_b]`` overlap matrices go to the CPU for the assignment.

        Returns:
            :class:`SurrogateOutput` ``(loss, pq, per_class, matches)``; ``matches`` includes
            the pairs of padded masks (indices into ``pred_masks[b]``).

        Raises:
            ValueError: empty batch or lists of different lengths; non-tensors; masks not 3-D,
                of the wrong dtype, with NaN/inf or values outside [0, 1]; ``H, W`` mismatch
                between pred, gt and weights; class tensors of the wrong length, non-integer
                dtype or with negative ids; weights negative or not finite; ``pred_masks`` of
                different images with different dtype or device; ``padded_gt`` with more
                entries than masks, out-of-range, repeated or matched ground-truth indices, or
                a class that differs from its ground truth's; ``matches`` with out-of-range or
                repeated indices or pairs of different classes.
        """
        n = len(pred_masks)
        lengths = {"pred_masks": n, "pred_classes": len(pred_classes),
                   "gt_masks": len(gt_masks), "gt_classes": len(gt_classes)}
        if pixel_weights is not None:
            lengths["pixel_weights"] = len(pixel_weights)
        if padded_gt is not None:
            lengths["padded_gt"] = len(padded_gt)
        if matches is not None:
            lengths["matches"] = len(matches)
        if len(set(lengths.values())) != 1:
            raise ValueError(f"per-image lists must have the same length, got {lengths}")
        if n == 0:
            raise ValueError("empty batch: pred_masks, pred_classes, gt_masks, gt_classes are empty lists")

        ref = pred_masks[0]

        # Pass 1: validate, compute overlaps and matches.
        per_image = []
        all_classes: Set[int] = set()
        for b in range(n):
            where = f"[{b}]"
            w_b = None if pixel_weights is None else pixel_weights[b]
            pred_cls, gt_cls = _check_image(pred_masks[b], pred_classes[b], gt_masks[b], gt_classes[b], w_b, where)
            p = pred_masks[b]
            if p.device != ref.device or p.dtype != ref.dtype:
                raise ValueError(
                    f"pred_masks{where} is {p.dtype} on {p.device} but pred_masks[0] is {ref.dtype} on "
                    f"{ref.device}; all predicted masks of a batch must share dtype and device"
                )
            if p.dtype in (torch.float16, torch.bfloat16):
                # Sums over pixels (areas, overlaps) overflow float16 from 65504 (a 256x256 mask
                # with weight 1): half-precision masks are computed in float32 (differentiably).
                p = p.float()
            g = gt_masks[b].to(device=p.device, dtype=p.dtype)
            if w_b is None:
                w = torch.ones(p.shape[1:], dtype=p.dtype, device=p.device)
            else:
                w = w_b.to(device=p.device, dtype=p.dtype)
            inter, union, area_p, area_g = _weighted_overlaps(p, g, w)
            pads = self._check_padded(padded_gt, b, len(pred_cls), pred_cls, gt_cls)
            m_real = len(pred_cls) - len(pads)
            inter_np = inter.detach().to(torch.float64).cpu().numpy()
            union_np = union.detach().to(torch.float64).cpu().numpy()
            if matches is None:
                pairs = _assign(inter_np[:m_real], union_np[:m_real], pred_cls[:m_real], gt_cls,
                                self.thing_classes, self.eps, self.match_zero_overlap)
            else:
                pairs = self._check_matches(matches[b], b, pred_cls[:m_real], gt_cls)
            matched_gt = {j for _, j in pairs}
            twice = sorted(matched_gt.intersection(pads))
            if twice:
                raise ValueError(
                    f"padded_gt{where} names ground-truth segments {twice} that the matching of the "
                    "other predicted masks already matches; pad only unmatched ground truth "
                    "(PanopticQualitySurrogate.unmatched_gt)"
                )
            pairs = sorted(pairs + [(m_real + k, j) for k, j in enumerate(pads)])
            g_nonzero = g.flatten(1).gt(0).any(1)  # [G]
            per_image.append((p, inter, union, area_p, area_g, g_nonzero, pred_cls, gt_cls, pairs))
            all_classes.update(pred_cls)
            all_classes.update(gt_cls)

        matches = [list(item[-1]) for item in per_image]
        classes = sorted(all_classes)
        if not classes:
            return self._empty_output(pred_masks, matches)
        index_of = {c: i for i, c in enumerate(classes)}
        num_classes = len(classes)

        # Pass 2: soft TP / FP / FN per class, summed over the batch.
        sums = [ref.new_zeros(num_classes, dtype=per_image[0][0].dtype) for _ in range(4)]  # numerator, TP, FP, FN
        for p, inter, union, area_p, area_g, g_nonzero, pred_cls, gt_cls, pairs in per_image:
            if self.rule == "original":
                self._accumulate_original(sums, index_of, p, inter, union, area_p, area_g, g_nonzero,
                                          pred_cls, gt_cls, pairs)
            else:
                self._accumulate_pq(sums, index_of, p, inter, union, pred_cls, gt_cls, pairs)
        numerator, tp_sum, fp_sum, fn_sum = sums

        denominator = tp_sum + 0.5 * (fp_sum + fn_sum)
        keep = (denominator > 0).tolist()
        if not any(keep):
            return self._empty_output(pred_masks, matches)
        keep_idx = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long, device=ref.device)
        pq_c = (numerator[keep_idx] + self.ratio_eps) / (denominator[keep_idx] + self.ratio_eps)
        pq = pq_c.mean()
        per_class = {classes[i]: float(v) for i, v in zip(keep_idx.tolist(), pq_c.detach().cpu().tolist())}
        return SurrogateOutput(loss=1.0 - pq, pq=pq, per_class=per_class, matches=matches)

    # ------------------------------------------------------------------ pieces of forward
    @staticmethod
    def _check_matches(raw, b: int, pred_cls: List[int], gt_cls: List[int]) -> List[Tuple[int, int]]:
        where = f"matches[{b}]"
        pairs = []
        for k, pair in enumerate(_as_sequence(raw, where, "a sequence of (pred_index, gt_index) pairs")):
            what = "a (pred_index, gt_index) pair of integers"
            try:
                i, j = pair
            except (TypeError, ValueError):
                raise ValueError(f"{where}[{k}] must be {what}, got {pair!r}") from None
            i, j = _as_index(i, f"{where}[{k}]", what), _as_index(j, f"{where}[{k}]", what)
            if not (0 <= i < len(pred_cls) and 0 <= j < len(gt_cls)):
                raise ValueError(
                    f"{where}[{k}] = {(i, j)} is out of range ({len(pred_cls)} non-padded predictions, "
                    f"{len(gt_cls)} ground-truth segments)"
                )
            if pred_cls[i] != gt_cls[j]:
                raise ValueError(f"{where}[{k}] = {(i, j)} pairs class {pred_cls[i]} with class {gt_cls[j]}")
            pairs.append((i, j))
        if len({i for i, _ in pairs}) != len(pairs) or len({j for _, j in pairs}) != len(pairs):
            raise ValueError(f"{where} uses an index twice: {pairs}")
        return pairs

    @staticmethod
    def _check_padded(padded_gt, b: int, m: int, pred_cls: List[int], gt_cls: List[int]) -> List[int]:
        if padded_gt is None:
            return []
        where = f"padded_gt[{b}]"
        raw = padded_gt[b]
        if isinstance(raw, Tensor):
            raw = raw.tolist()
        pads = []
        for k, j in enumerate(_as_sequence(raw, where, "a sequence of ground-truth indices")):
            j = _as_index(j, f"{where}[{k}]", "an integer ground-truth index")
            if not 0 <= j < len(gt_cls):
                raise ValueError(f"{where}[{k}] = {j} is out of range [0, {len(gt_cls)}) (ground-truth segments)")
            pads.append(j)
        if len(set(pads)) != len(pads):
            raise ValueError(f"{where} repeats a ground-truth index: {pads}")
        if len(pads) > m:
            raise ValueError(f"{where} names {len(pads)} padded masks but pred_masks[{b}] has only {m} masks")
        for k, j in enumerate(pads):
            c_pred = pred_cls[m - len(pads) + k]
            if c_pred != gt_cls[j]:
                raise ValueError(
                    f"{where}[{k}]: the padded mask has class {c_pred} but ground truth {j} has class {gt_cls[j]}"
                )
        return pads

    def _matched_pairs(self, index_of, p, inter, union, pred_cls, gt_cls, pairs):
        """What both counting rules share: class indices of the predictions ``[M]`` and the
        ground truth ``[G]``, the foreground probabilities ``s`` of the predictions ``[M]``,
        matched flags, and for the ``pairs`` their prediction / ground-truth indices, soft IoUs
        ``(inter + eps) / (union + eps)`` and soft thresholds ``h`` (None without pairs)."""
        dev = p.device
        pred_idx = torch.tensor([index_of[c] for c in pred_cls], dtype=torch.long, device=dev)
        gt_idx = torch.tensor([index_of[c] for c in gt_cls], dtype=torch.long, device=dev)
        s = self.foreground_probability(p.flatten(1).sum(1), pred_cls)  # [M]
        matched_pred = torch.zeros(len(pred_cls), dtype=torch.bool, device=dev)
        matched_gt = torch.zeros(len(gt_cls), dtype=torch.bool, device=dev)
        mp = mg = iou = h = None
        if pairs:
            mp = torch.tensor([i for i, _ in pairs], dtype=torch.long, device=dev)
            mg = torch.tensor([j for _, j in pairs], dtype=torch.long, device=dev)
            matched_pred[mp] = True
            matched_gt[mg] = True
            iou = (inter[mp, mg] + self.eps) / (union[mp, mg] + self.eps)
            h = self.soft_threshold(iou)
        return pred_idx, gt_idx, s, matched_pred, matched_gt, mp, mg, iou, h

    def _accumulate_original(self, sums, index_of, p, inter, union, area_p, area_g, g_nonzero,
                             pred_cls, gt_cls, pairs) -> None:
        """COPS ``PanopticQualityLoss``: every segment in one pair, empty counterparts where
        unmatched (see the class docstring)."""
        numerator, tp_sum, fp_sum, fn_sum = sums
        dev, dt = p.device, p.dtype
        pred_idx, gt_idx, s, matched_pred, matched_gt, mp, mg, iou, h = self._matched_pairs(
            index_of, p, inter, union, pred_cls, gt_cls, pairs
        )
        if pairs:
            nz = g_nonzero[mg].to(dt)
            s_m = s[mp]
            cls_m = pred_idx[mp]
            numerator.index_add_(0, cls_m, h * s_m * nz * iou)
            tp_sum.index_add_(0, cls_m, h * s_m * nz)
            fn_sum.index_add_(0, cls_m, (1.0 - h) * nz)
            fp_sum.index_add_(0, cls_m, (1.0 - nz) * (1.0 - h) * s_m)
        un_p = ~matched_pred
        if bool(un_p.any()):
            # paired with an empty ground truth: IoU = eps / (area_w(p) + eps), nz = 0
            iou0 = self.eps / (area_p[un_p] + self.eps)
            fp_sum.index_add_(0, pred_idx[un_p], (1.0 - self.soft_threshold(iou0)) * s[un_p])
        un_g = ~matched_gt
        if bool(un_g.any()):
            # paired with a constant empty prediction (no padded mask given): area 0
            iou0 = self.eps / (area_g[un_g] + self.eps)
            h0 = self.soft_threshold(iou0)
            cls_g = [gt_cls[j] for j in torch.nonzero(un_g).flatten().tolist()]
            s0 = self.foreground_probability(torch.zeros(len(cls_g), dtype=dt, device=dev), cls_g)
            nz = g_nonzero[un_g].to(dt)
            numerator.index_add_(0, gt_idx[un_g], h0 * s0 * nz * iou0)
            tp_sum.index_add_(0, gt_idx[un_g], h0 * s0 * nz)
            fn_sum.index_add_(0, gt_idx[un_g], (1.0 - h0) * nz)

    def _accumulate_pq(self, sums, index_of, p, inter, union, pred_cls, gt_cls, pairs) -> None:
        """Soft PQ counts (rule ``"pq"``, see the class docstring)."""
        numerator, tp_sum, fp_sum, fn_sum = sums
        dev, dt = p.device, p.dtype
        pred_idx, gt_idx, s, matched_pred, matched_gt, mp, mg, iou, h = self._matched_pairs(
            index_of, p, inter, union, pred_cls, gt_cls, pairs
        )
        if pairs:
            s_m = s[mp]
            t = h * s_m
            cls_m = pred_idx[mp]
            numerator.index_add_(0, cls_m, t * iou)
            tp_sum.index_add_(0, cls_m, t)
            fp_sum.index_add_(0, cls_m, (1.0 - h) * s_m)
            fn_sum.index_add_(0, cls_m, 1.0 - h)
        un_p = ~matched_pred
        fp_sum.index_add_(0, pred_idx[un_p], s[un_p])
        un_g = ~matched_gt
        fn_sum.index_add_(0, gt_idx[un_g], torch.ones(int(un_g.sum()), dtype=dt, device=dev))

    @staticmethod
    def _empty_output(pred_masks: List[Tensor], matches) -> SurrogateOutput:
        ref = pred_masks[0]
        loss = ref.new_zeros(())
        for p in pred_masks:
            loss = loss + 0.0 * p.to(device=ref.device).sum()
        return SurrogateOutput(loss=loss, pq=1.0 - loss, per_class={}, matches=matches)
