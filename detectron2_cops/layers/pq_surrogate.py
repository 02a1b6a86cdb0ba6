"""Differentiable panoptic-quality surrogate of COPS and the segment matching it uses.

Source: Abbas & Swoboda, "Combinatorial Optimization for Panoptic Segmentation: A Fully
Differentiable Approach", NeurIPS 2021, "Contribution 2: optimize panoptic quality surrogate"
(the paper's slides) and the authors' code
(``panoptic_affinity/losses.py``: ``iou_batch``, ``PanopticQualityLoss``; ``utils.py``:
``MatchMasksPair``; ``panoptic_seg_affinity.py``: ``compute_foreground_probabilities``). The
exact definitions used here are listed in :class:`PanopticQualitySurrogate`.

Input checks: :func:`match_segments`, :meth:`PanopticQualitySurrogate.padding` (the ground
truth) and :meth:`PanopticQualitySurrogate.forward` check what they receive once; the matching
and padding of a training step stay inside the module (:class:`GroundTruthPadding`), so they
are never re-checked.

Pure PyTorch + SciPy (``scipy.optimize.linear_sum_assignment``); no Detectron2 import.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..checks import as_choice, as_float, as_int_set
from ._checks import check_tensor

__all__ = ["GroundTruthPadding", "PanopticQualitySurrogate", "SurrogateOutput", "match_segments"]


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


def _same_lengths(**lists) -> int:
    lengths = {name: len(v) for name, v in lists.items() if v is not None}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"per-image lists must have the same length, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"empty batch: {', '.join(lengths)} are empty lists")
    return n


def _check_gt(gt_masks, gt_classes, pixel_weights, where: str) -> List[int]:
    """Check one image's ground truth (and weights); returns its classes."""
    check_tensor(gt_masks, f"gt_masks{where}", "[G, H, W]", ndim=3, allow_bool=True, at_most=1)
    if pixel_weights is not None:
        hw = list(gt_masks.shape[1:])
        check_tensor(pixel_weights, f"pixel_weights{where}", f"[H, W] = {hw}", shape=hw, non_negative=True)
    return _check_classes(gt_classes, f"gt_classes{where}", gt_masks.shape[0])


def _check_pred(pred_masks, pred_classes, gt_masks, where: str) -> List[int]:
    """Check one image's predictions against its (checked) ground truth; returns their classes."""
    check_tensor(pred_masks, f"pred_masks{where}", "[M, H, W]", ndim=3, at_most=1)
    if tuple(gt_masks.shape[1:]) != tuple(pred_masks.shape[1:]):
        raise ValueError(f"gt_masks{where} spatial size {list(gt_masks.shape[1:])} differs from "
                         f"pred_masks{where} {list(pred_masks.shape[1:])}")
    return _check_classes(pred_classes, f"pred_classes{where}", pred_masks.shape[0])


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


def _assign(inter: np.ndarray, union: np.ndarray, pred_cls: Sequence[int], gt_cls: Sequence[int], things: set,
            eps: float, match_zero_overlap: bool) -> List[Tuple[int, int]]:
    """The matching of :func:`match_segments` on its (no-grad) float64 ``[M, G]`` overlap matrices."""
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
        pairs += [(int(pi[r]), int(gi[k])) for r, k in zip(rows.tolist(), cols.tolist())
                  if not is_thing or sub_inter[r, k] > 0]
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
      ``utils.py``): every pair competes with its eps-smoothed IoU, so
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
            values outside [0, 1] in masks, negative or non-finite weights; ``thing_classes``
            not integers ``>= 0``, ``eps`` not a finite number ``> 0``.
    """
    eps = as_float(eps, "eps", positive=True)
    things = as_int_set(thing_classes, "thing_classes", 0)
    gt_cls = _check_gt(gt_masks, gt_classes, pixel_weights, "")
    pred_cls = _check_pred(pred_masks, pred_classes, gt_masks, "")
    return _match(pred_masks, pred_cls, gt_masks, gt_cls, pixel_weights, things, eps, bool(match_zero_overlap))


def _match(pred_masks: Tensor, pred_cls: List[int], gt_masks: Tensor, gt_cls: List[int],
           pixel_weights: Optional[Tensor], things, eps: float, match_zero_overlap: bool) -> List[Tuple[int, int]]:
    """:func:`match_segments` without its checks, on float64 overlaps computed without gradient."""
    with torch.no_grad():
        p = pred_masks.detach().to(torch.float64)
        g = gt_masks.detach().to(device=p.device, dtype=torch.float64)
        if pixel_weights is None:
            w = torch.ones(p.shape[1:], dtype=torch.float64, device=p.device)
        else:
            w = pixel_weights.detach().to(device=p.device, dtype=torch.float64)
        inter, union, _, _ = _weighted_overlaps(p, g, w)
    return _assign(inter.cpu().numpy(), union.cpu().numpy(), pred_cls, gt_cls, things, eps, match_zero_overlap)


class PaddedImage(NamedTuple):
    """What :class:`GroundTruthPadding` found for one image: the classes of the masks it was
    called with, their matching ``(pred_index, gt_index)`` and the unmatched ground truth (the
    padded masks, in this order)."""

    pred_classes: List[int]
    pairs: List[Tuple[int, int]]
    unmatched: List[int]


class GroundTruthPadding:
    """The ``pad_fn`` of :class:`~detectron2_cops.layers.AMWCLayer` that pads one empty mask per
    ground-truth segment that the surrogate's matching leaves unmatched (COPS
    ``ComputeBestGroundTruth``, ``utils.py``); made by :meth:`PanopticQualitySurrogate.padding`
    and passed to its :meth:`~PanopticQualitySurrogate.forward`, which then uses the matching
    and the padding found here.

    ``padding(b, masks [M_b, H, W], classes [M_b] int64)`` (called by the layer with its masks
    of image ``b``) returns the classes of the unmatched ground-truth segments, in ascending
    index order. ``images[b]`` holds the :class:`PaddedImage` of image ``b``.

    Raises:
        ValueError: (on a call) ``b`` is not an image of the ground truth.
    """

    def __init__(self, surrogate: "PanopticQualitySurrogate", gt_masks, gt_classes, pixel_weights, gt_cls):
        self.surrogate = surrogate
        self.gt_masks, self.gt_classes, self.pixel_weights = gt_masks, gt_classes, pixel_weights
        self.gt_cls: List[List[int]] = gt_cls
        self.images: Dict[int, PaddedImage] = {}

    def __call__(self, b: int, masks: Tensor, classes: Tensor) -> List[int]:
        if not 0 <= b < len(self.gt_cls):
            raise ValueError(f"this padding holds the ground truth of {len(self.gt_cls)} images, not of image {b}")
        s, gt_cls, pred_cls = self.surrogate, self.gt_cls[b], classes.tolist()
        w = None if self.pixel_weights is None else self.pixel_weights[b]
        pairs = _match(masks, pred_cls, self.gt_masks[b], gt_cls, w, s.thing_classes, s.eps, s.match_zero_overlap)
        matched = {j for _, j in pairs}
        unmatched = [j for j in range(len(gt_cls)) if j not in matched]
        self.images[b] = PaddedImage(pred_cls, pairs, unmatched)
        return [gt_cls[j] for j in unmatched]


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
      ``losses.py``);
    * soft threshold at 0.5: ``h(u) = u^beta / (u^beta + (1 - u)^beta)``, ``beta = 4``;
    * foreground probability ``s(p) = sigmoid(area_temperature * (area(p) - min_area))``,
      ``area(p) = sum_x p(x)`` (unweighted, pixels of the masks' grid), ``min_area`` =
      ``instance_area`` for thing classes and ``stuff_area`` for stuff classes
      (``compute_foreground_probabilities``, ``panoptic_seg_affinity.py``; in the grid
      units the caller passes: the COPS code uses ``INSTANCE_AREA / 4`` and
      ``STUFF_AREA / 4 / 4`` grid pixels in training);
    * matching: :func:`match_segments` (per-class maximum-IoU assignment, stuff by class;
      ``match_zero_overlap``);
    * ``ratio_eps``: default 0.1 as the COPS code (``PanopticQualityLoss(eps=1e-1)``); with it a
      class seen only as false positives has ``PQ~_c = ratio_eps / (FP~ / 2 + ratio_eps)`` and
      gives a gradient that shrinks ``s(p)`` and the masks; with 0 such a class has ``PQ~_c = 0``
      and no gradient.

    Two counting rules (``rule``):

    * ``"original"`` (default; ``PanopticQualityLoss.forward``, ``losses.py``, with the
      ground truth of ``ComputeBestGroundTruth``, ``utils.py``): every segment is in one
      pair ``(p, g)``: matched pairs; an unmatched prediction with an *empty* ground truth; an
      unmatched ground truth with an *empty* prediction (its padded mask, see :meth:`padding`,
      or, where the caller gave none, a constant zero mask). With
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
            ``beta`` or ``area_temperature``, negative ``ratio_eps``, thing ids that are not
            integers ``>= 0``, an unknown rule, a ``match_zero_overlap`` that is not a bool), and
            in :meth:`padding` and :meth:`forward` on bad inputs (see there).
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
        self.thing_classes = as_int_set(thing_classes, "thing_classes", 0)
        self.stuff_area = as_float(stuff_area, "stuff_area")
        self.instance_area = as_float(instance_area, "instance_area")
        self.eps = as_float(eps, "eps", positive=True)
        self.beta = as_float(beta, "beta", positive=True)
        self.area_temperature = as_float(area_temperature, "area_temperature", positive=True)
        self.ratio_eps = as_float(ratio_eps, "ratio_eps", 0.0)
        self.rule = as_choice(rule, "rule", list(_RULES))
        if not isinstance(match_zero_overlap, (bool, np.bool_)):
            raise ValueError(f"match_zero_overlap must be a bool, got {match_zero_overlap!r}")
        self.match_zero_overlap = bool(match_zero_overlap)

    def extra_repr(self) -> str:
        fields = ("stuff_area", "instance_area", "eps", "beta", "area_temperature", "ratio_eps", "rule",
                  "match_zero_overlap")
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields)
        return f"thing_classes={sorted(self.thing_classes)}, {shown}"

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

    def padding(
        self,
        gt_masks: List[Tensor],
        gt_classes: List[Tensor],
        pixel_weights: Optional[List[Tensor]] = None,
    ) -> GroundTruthPadding:
        """The ground truth of a batch, checked, as the ``pad_fn`` of an
        :class:`~detectron2_cops.layers.AMWCLayer` call (see :class:`GroundTruthPadding`): the
        layer appends one empty mask per ground-truth segment that this module's matching leaves
        unmatched, and :meth:`forward` given ``padding=`` (with these same lists) pairs each with
        its ground truth (COPS ``ComputeBestGroundTruth``), so that its loss gradient exists.

        Args and errors: ``gt_masks``, ``gt_classes``, ``pixel_weights`` as in :meth:`forward`.
        """
        n = _same_lengths(gt_masks=gt_masks, gt_classes=gt_classes, pixel_weights=pixel_weights)
        gt_cls = [_check_gt(gt_masks[b], gt_classes[b], None if pixel_weights is None else pixel_weights[b], f"[{b}]")
                  for b in range(n)]
        return GroundTruthPadding(self, gt_masks, gt_classes, pixel_weights, gt_cls)

    def forward(
        self,
        pred_masks: List[Tensor],
        pred_classes: List[Tensor],
        gt_masks: List[Tensor],
        gt_classes: List[Tensor],
        pixel_weights: Optional[List[Tensor]] = None,
        padding: Optional[GroundTruthPadding] = None,
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
            padding: optional, ``self.padding(gt_masks, gt_classes, pixel_weights)`` (the same
                list objects) after it served as the ``pad_fn`` of the AMWC layer that made
                ``pred_masks``: each image's masks are then the ones the padding was called
                with followed by its padded masks, matched as the padding matched them, each
                padded mask paired with its ground truth. Default: no padded masks, the
                matching is computed here.

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
                different images with different dtype or device; a ``padding`` that is not
                this module's for these ground-truth lists, or whose masks (classes, count)
                differ from ``pred_masks`` / ``pred_classes``.
        """
        if padding is None:
            gt_cls_all = self.padding(gt_masks, gt_classes, pixel_weights).gt_cls  # checks the ground truth
        elif not (isinstance(padding, GroundTruthPadding) and padding.surrogate is self and padding.gt_masks is gt_masks
                  and padding.gt_classes is gt_classes and padding.pixel_weights is pixel_weights):
            raise ValueError("padding must be this module's padding(gt_masks, gt_classes, pixel_weights) of the "
                             "same lists as given here")
        else:
            gt_cls_all = padding.gt_cls
        n = _same_lengths(pred_masks=pred_masks, pred_classes=pred_classes, gt_masks=gt_masks)

        ref = pred_masks[0]

        # Pass 1: check the predictions, compute overlaps and matches.
        per_image = []
        all_classes = set()
        for b in range(n):
            where = f"[{b}]"
            gt_cls = gt_cls_all[b]
            pred_cls = _check_pred(pred_masks[b], pred_classes[b], gt_masks[b], where)
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
            if pixel_weights is None:
                w = torch.ones(p.shape[1:], dtype=p.dtype, device=p.device)
            else:
                w = pixel_weights[b].to(device=p.device, dtype=p.dtype)
            inter, union, area_p, area_g = _weighted_overlaps(p, g, w)
            if padding is None:
                pairs = _assign(inter.detach().to(torch.float64).cpu().numpy(),
                                union.detach().to(torch.float64).cpu().numpy(),
                                pred_cls, gt_cls, self.thing_classes, self.eps, self.match_zero_overlap)
            else:
                image = padding.images.get(b)
                if image is None or pred_cls != image.pred_classes + [gt_cls[j] for j in image.unmatched]:
                    raise ValueError(
                        f"pred_masks{where} / pred_classes{where} are not the masks the padding was called with "
                        "(as the pad_fn of the AMWC layer that made them), followed by its padded masks"
                    )
                m = len(image.pred_classes)
                pairs = image.pairs + [(m + k, j) for k, j in enumerate(image.unmatched)]
            g_nonzero = g.flatten(1).gt(0).any(1)  # [G]
            per_image.append((p, inter, union, area_p, area_g, g_nonzero, pred_cls, gt_cls, pairs))
            all_classes.update(pred_cls, gt_cls)

        matches = [list(item[-1]) for item in per_image]
        classes = sorted(all_classes)
        if not classes:
            return self._empty_output(pred_masks, matches)
        index_of = {c: i for i, c in enumerate(classes)}
        num_classes = len(classes)

        # Pass 2: soft TP / FP / FN per class, summed over the batch.
        sums = [ref.new_zeros(num_classes, dtype=per_image[0][0].dtype) for _ in range(4)]  # numerator, TP, FP, FN
        for image in per_image:
            self._accumulate(sums, index_of, *image)
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
    def _accumulate(self, sums, index_of, p, inter, union, area_p, area_g, g_nonzero, pred_cls, gt_cls,
                    pairs) -> None:
        """Add one image's soft counts to ``sums`` (numerator, TP~, FP~, FN~ per class index) by
        ``self.rule`` (see the class docstring): ``"original"``, the COPS ``PanopticQualityLoss``
        (every segment in one pair, empty counterparts where unmatched), or ``"pq"``."""
        numerator, tp_sum, fp_sum, fn_sum = sums
        dev, dt = p.device, p.dtype
        pred_idx = torch.tensor([index_of[c] for c in pred_cls], dtype=torch.long, device=dev)
        gt_idx = torch.tensor([index_of[c] for c in gt_cls], dtype=torch.long, device=dev)
        s = self.foreground_probability(p.flatten(1).sum(1), pred_cls)  # [M]
        matched_pred = torch.zeros(len(pred_cls), dtype=torch.bool, device=dev)
        matched_gt = torch.zeros(len(gt_cls), dtype=torch.bool, device=dev)
        if pairs:
            mp, mg = torch.tensor(pairs, dtype=torch.long, device=dev).T  # pred / gt index of each pair
            matched_pred[mp] = True
            matched_gt[mg] = True
            iou = (inter[mp, mg] + self.eps) / (union[mp, mg] + self.eps)
            h = self.soft_threshold(iou)
            s_m, cls_m = s[mp], pred_idx[mp]
            if self.rule == "original":
                nz = g_nonzero[mg].to(dt)
                numerator.index_add_(0, cls_m, h * s_m * nz * iou)
                tp_sum.index_add_(0, cls_m, h * s_m * nz)
                fn_sum.index_add_(0, cls_m, (1.0 - h) * nz)
                fp_sum.index_add_(0, cls_m, (1.0 - nz) * (1.0 - h) * s_m)
            else:
                t = h * s_m
                numerator.index_add_(0, cls_m, t * iou)
                tp_sum.index_add_(0, cls_m, t)
                fp_sum.index_add_(0, cls_m, (1.0 - h) * s_m)
                fn_sum.index_add_(0, cls_m, 1.0 - h)
        un_p, un_g = ~matched_pred, ~matched_gt
        if self.rule == "pq":
            fp_sum.index_add_(0, pred_idx[un_p], s[un_p])
            fn_sum.index_add_(0, gt_idx[un_g], torch.ones(int(un_g.sum()), dtype=dt, device=dev))
            return
        if bool(un_p.any()):
            # paired with an empty ground truth: IoU = eps / (area_w(p) + eps), nz = 0
            iou0 = self.eps / (area_p[un_p] + self.eps)
            fp_sum.index_add_(0, pred_idx[un_p], (1.0 - self.soft_threshold(iou0)) * s[un_p])
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

    @staticmethod
    def _empty_output(pred_masks: List[Tensor], matches) -> SurrogateOutput:
        ref = pred_masks[0]
        loss = ref.new_zeros(())
        for p in pred_masks:
            loss = loss + 0.0 * p.to(device=ref.device).sum()
        return SurrogateOutput(loss=loss, pq=1.0 - loss, per_class={}, matches=matches)
