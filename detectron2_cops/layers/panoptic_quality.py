"""Exact panoptic quality (PQ, SQ, RQ) on panoptic id maps.

Implements the metric of Kirillov et al., "Panoptic Segmentation", CVPR 2019, with exactly the
matching, void and crowd rules of the COCO panoptic reference implementation (panopticapi
``pq_compute_single_core``; the same algorithm ships as
``cityscapesscripts.evaluation.evalPanopticSemanticLabeling.pq_compute_single_core``), but on
in-memory id maps instead of PNG files and fully vectorised with NumPy (one ``np.unique`` on a
combined gt/pred index gives the whole confusion table of segments).

Id convention: ``id = class * label_divisor + instance``; one id value (``void_id``, default -1)
marks void pixels. Class ids are ``id // label_divisor`` (floor division).

This module imports neither Detectron2 nor panopticapi.
"""
from __future__ import annotations

from collections import abc
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np

from ..checks import as_int, as_int_set

__all__ = ["panoptic_quality"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _as_id_map(x: Any, name: str) -> np.ndarray:
    """Convert one numpy array / torch tensor id map to a 2-D ``np.int64`` array (validated)."""
    if isinstance(x, np.ndarray):
        arr = x
    elif type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        # torch.Tensor without importing torch at module level.
        if x.is_floating_point() or x.is_complex() or str(x.dtype) == "torch.bool":
            raise ValueError(f"{name} must have an integer dtype, got {x.dtype}")
        arr = x.detach().cpu().numpy()
    else:
        raise ValueError(
            f"{name} must be a numpy array or torch tensor of shape [H, W], got {type(x).__name__}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [H, W], got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint64 and arr.size > 0 and int(arr.max()) > _INT64_MAX:
        raise ValueError(f"{name} has ids larger than the int64 range")
    return arr.astype(np.int64, copy=False)


def _crowd_array(ids: Iterable[Any], name: str, void_id: int) -> np.ndarray:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, abc.Iterable):
        raise ValueError(f"{name} must be an iterable of integer panoptic ids, got {ids!r}")
    out = [as_int(v, f"{name}[{i}]", _INT64_MIN, _INT64_MAX) for i, v in enumerate(ids)]
    if void_id in out:
        raise ValueError(f"{name}[{out.index(void_id)}] = {void_id} equals void_id; void cannot be a crowd segment")
    return np.asarray(out, dtype=np.int64)


def _image_stats(
    pred: np.ndarray,
    gt: np.ndarray,
    crowd_ids: np.ndarray,
    label_divisor: int,
    void_id: int,
    where: str,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PQ statistics of one image.

    Returns ``(classes, iou_sum, tp, fp, fn)``: ``classes`` the sorted class ids that
    occur in ``gt`` or ``pred`` (void excluded), the other arrays aligned with it.
    """
    gt_ids, gt_inv, gt_area = np.unique(gt.ravel(), return_inverse=True, return_counts=True)
    pred_ids, pred_inv, pred_area = np.unique(pred.ravel(), return_inverse=True, return_counts=True)
    gt_inv = gt_inv.ravel()
    pred_inv = pred_inv.ravel()

    gt_void = gt_ids == void_id
    pred_void = pred_ids == void_id
    gt_cls = np.floor_divide(gt_ids, label_divisor)
    pred_cls = np.floor_divide(pred_ids, label_divisor)
    for ids, cls, void, nm in ((gt_ids, gt_cls, gt_void, "gt"), (pred_ids, pred_cls, pred_void, "pred")):
        bad = (cls < 0) & ~void
        if bad.any():
            raise ValueError(
                f"{nm}{where} contains ids {ids[bad][:5].tolist()} that decode to negative class ids "
                f"(id // label_divisor with label_divisor={label_divisor}) and are not void_id={void_id}"
            )
    gt_crowd = np.isin(gt_ids, crowd_ids) & ~gt_void

    # Confusion table of segments: one np.unique over a combined (gt index, pred index) key.
    n_pred = pred_ids.size
    pair_keys, inter = np.unique(gt_inv.astype(np.int64) * n_pred + pred_inv, return_counts=True)
    pg = pair_keys // n_pred
    pp = pair_keys % n_pred

    # Pixels of each predicted segment that lie on gt void.
    pred_void_inter = np.zeros(n_pred, dtype=np.int64)
    on_void = gt_void[pg]
    pred_void_inter[pp[on_void]] = inter[on_void]

    # True positives: same class, gt not crowd, IoU > 0.5 with void removed from the union.
    same_class = gt_cls[pg] == pred_cls[pp]
    cand = same_class & ~gt_void[pg] & ~pred_void[pp] & ~gt_crowd[pg]
    cg, cp, ci = pg[cand], pp[cand], inter[cand]
    union = pred_area[cp] + gt_area[cg] - ci - pred_void_inter[cp]
    iou = ci / union
    match = iou > 0.5
    gt_matched = np.zeros(gt_ids.size, dtype=bool)
    pred_matched = np.zeros(n_pred, dtype=bool)
    gt_matched[cg[match]] = True
    pred_matched[cp[match]] = True

    # Unmatched predictions are ignored if more than half of them is void or crowd of their class.
    crowd_pair = same_class & gt_crowd[pg]
    pred_crowd_inter = np.zeros(n_pred, dtype=np.int64)
    np.add.at(pred_crowd_inter, pp[crowd_pair], inter[crowd_pair])
    ignored = (pred_void_inter + pred_crowd_inter) / pred_area > 0.5
    is_fp = ~pred_void & ~pred_matched & ~ignored
    is_fn = ~gt_void & ~gt_crowd & ~gt_matched

    classes = np.unique(np.concatenate([gt_cls[~gt_void], pred_cls[~pred_void]]))
    k = classes.size
    iou_sum = np.zeros(k, dtype=np.float64)
    m_cls = np.searchsorted(classes, gt_cls[cg[match]])
    np.add.at(iou_sum, m_cls, iou[match])
    tp = np.bincount(m_cls, minlength=k)
    fp = np.bincount(np.searchsorted(classes, pred_cls[is_fp]), minlength=k)
    fn = np.bincount(np.searchsorted(classes, gt_cls[is_fn]), minlength=k)
    return classes, iou_sum, tp, fp, fn


def _average(per_class: Dict[int, Dict[str, float]], selected: Iterable[int]) -> Dict[str, float]:
    """Mean pq / sq / rq over the ``selected`` classes with ``TP + FP + FN > 0`` (0.0 if none)."""
    counted = [per_class[c] for c in selected if per_class[c]["tp"] + per_class[c]["fp"] + per_class[c]["fn"] > 0]
    n = len(counted)
    means = {k: sum(st[k] for st in counted) / n if n else 0.0 for k in ("pq", "sq", "rq")}
    return dict(means, n=n)


def panoptic_quality(
    pred: Union[Any, Sequence[Any]],
    gt: Union[Any, Sequence[Any]],
    *,
    label_divisor: int,
    thing_classes: Iterable[int],
    gt_crowd_ids: Union[Iterable[int], Sequence[Iterable[int]]] = (),
    void_id: int = -1,
) -> Dict[str, Any]:
    """Exact panoptic quality PQ = SQ * RQ of predicted vs. ground-truth panoptic id maps.

    Definition: Kirillov et al., "Panoptic Segmentation", CVPR 2019, eq. (1)-(2). Matching,
    void and crowd rules are exactly those of the COCO panoptic reference implementation
    (panopticapi ``pq_compute_single_core``, identical to
    ``cityscapesscripts.evaluation.evalPanopticSemanticLabeling.pq_compute_single_core``):

    * a predicted and a ground-truth segment of the same class match (TP) if
      ``IoU = |p & g| / (|p| + |g| - |p & g| - |p & void_gt|) > 0.5`` (the prediction's pixels
      on ground-truth void are removed from the union); crowd ground-truth segments never match;
    * an unmatched non-crowd ground-truth segment is a FN; crowd segments are never FN;
    * an unmatched prediction is a FP unless more than half of its pixels lie on ground-truth
      void plus the crowd segments of its own class, in which case it is ignored;
    * per class ``PQ = sum_TP IoU / (TP + FP/2 + FN/2)``, ``SQ = sum_TP IoU / TP`` (0 if TP = 0),
      ``RQ = TP / (TP + FP/2 + FN/2)``; statistics are summed over all images first, then the
      per-class values are averaged over the classes with ``TP + FP + FN > 0``.

    One difference to the reference, for inputs the reference does not define well: if one image
    has several crowd segments of the same class, all of them count as ignorable crowd region
    (the reference keeps only one of them per class, whichever comes last in its dict).

    Args:
        pred: predicted panoptic id map ``[H, W]`` of any integer dtype (numpy array or torch
            tensor, any device), ``id = class * label_divisor + instance``, ``void_id`` = void
            (unlabelled pixels); or a list/tuple of such maps, one per image, to accumulate
            statistics over a dataset. Units: pixels (any resolution, same as ``gt``).
        gt: ground-truth id map(s) in the same convention and of the same shape(s) as ``pred``.
        label_divisor: positive int; ``class = id // label_divisor``.
        thing_classes: class ids (``id // label_divisor``) that are things; every other class
            is stuff. Only used for the "Things"/"Stuff" split.
        gt_crowd_ids: panoptic ids in ``gt`` that are crowd segments (ids not present in the
            map are allowed and have no effect). For a list of images: a list of iterables, one
            per image (``()`` = no crowd anywhere).
        void_id: the id of void pixels in both maps (may be negative; default -1).

    Returns:
        ``{"All": {"pq", "sq", "rq", "n"}, "Things": {...}, "Stuff": {...},
        "per_class": {class_id: {"pq", "sq", "rq", "tp", "fp", "fn", "iou"}}}`` where pq/sq/rq
        are Python floats in [0, 1], ``n`` the number of classes averaged, and ``per_class``
        lists every class occurring (non-void) in ``gt`` or ``pred`` (a class with
        ``TP + FP + FN = 0``, e.g. crowd only, gets pq = sq = rq = 0.0 and is not averaged).
        An empty set of classes gives pq = sq = rq = 0.0 with n = 0.

    Raises:
        ValueError: maps not numpy/torch, not 2-D, non-integer dtype, shapes of ``pred`` and
            ``gt`` differ; list and non-list mixed or list lengths differ (including
            ``gt_crowd_ids``); ``label_divisor`` not an integer in ``[1, 2**63)``, ``void_id`` or a
            crowd id not an int64 integer, ``thing_classes`` not integers ``>= 0`` (integers are
            what ``operator.index`` accepts, never a bool or ``4.0``); ids other than
            ``void_id`` that decode to a negative class; a crowd id equal to ``void_id``.
    """
    label_divisor = as_int(label_divisor, "label_divisor", 1, _INT64_MAX)  # ids are int64
    void_id = as_int(void_id, "void_id", _INT64_MIN, _INT64_MAX)
    things = as_int_set(thing_classes, "thing_classes", 0)

    pred_is_list = isinstance(pred, (list, tuple))
    if pred_is_list != isinstance(gt, (list, tuple)):
        raise ValueError("pred and gt must both be single [H, W] maps or both lists of maps, got "
                         f"{type(pred).__name__} and {type(gt).__name__}")
    if pred_is_list:
        preds, gts, crowds = list(pred), list(gt), list(gt_crowd_ids) or [()] * len(pred)
        if not len(preds) == len(gts) == len(crowds):
            raise ValueError("pred, gt and gt_crowd_ids (one iterable of crowd ids per image, or () for none) must "
                             f"have the same length, got {len(preds)}, {len(gts)} and {len(crowds)}")
    else:
        preds, gts, crowds = [pred], [gt], [gt_crowd_ids]

    totals: Dict[int, List[float]] = {}
    for i, (p, g, cr) in enumerate(zip(preds, gts, crowds)):
        where = f"[{i}]" if pred_is_list else ""
        p_arr = _as_id_map(p, f"pred{where}")
        g_arr = _as_id_map(g, f"gt{where}")
        if p_arr.shape != g_arr.shape:
            raise ValueError(f"pred{where} and gt{where} shapes differ: {p_arr.shape} vs {g_arr.shape}")
        crowd = _crowd_array(cr, f"gt_crowd_ids{where}", void_id)
        if p_arr.size == 0:
            continue
        classes, iou_sum, tp, fp, fn = _image_stats(p_arr, g_arr, crowd, label_divisor, void_id, where)
        for c, s_iou, s_tp, s_fp, s_fn in zip(classes.tolist(), iou_sum, tp, fp, fn):
            acc = totals.setdefault(c, [0.0, 0, 0, 0])
            acc[0] += float(s_iou)
            acc[1] += int(s_tp)
            acc[2] += int(s_fp)
            acc[3] += int(s_fn)

    per_class: Dict[int, Dict[str, float]] = {}
    for c in sorted(totals):
        s_iou, tp, fp, fn = totals[c]
        denom = tp + 0.5 * fp + 0.5 * fn
        if tp + fp + fn == 0:
            pq = sq = rq = 0.0
        else:
            pq = s_iou / denom
            sq = s_iou / tp if tp != 0 else 0.0
            rq = tp / denom
        per_class[c] = {"pq": float(pq), "sq": float(sq), "rq": float(rq),
                        "tp": tp, "fp": fp, "fn": fn, "iou": float(s_iou)}

    return {
        "All": _average(per_class, per_class.keys()),
        "Things": _average(per_class, [c for c in per_class if c in things]),
        "Stuff": _average(per_class, [c for c in per_class if c not in things]),
        "per_class": per_class,
    }
