"""Training targets of COPS from a panoptic ground truth (NumPy/PyTorch only, no Detectron2).

COPS (Abbas & Swoboda, NeurIPS 2021, Sec. 3 and 4) trains

* a semantic head at full resolution (DeepLabCE with hard pixel mining and the small-instance
  weighting of DeeperLab / Panoptic-DeepLab), and
* an affinity head that predicts, for every edge of the grid graph of the output-stride-4 grid,
  whether its two endpoints lie in different panoptic segments (an edge *cut*, target 1) or in
  the same segment (a *join*, target 0); weighted binary cross entropy (pretraining stage),
* and, in the fully differentiable stage, the PQ surrogate on the stride-4 grid, which needs the
  ground-truth segments on that grid.

:class:`COPSTargetGenerator` produces all of them. Its design follows the original
implementation (``PanopticAffinityTargetGenerator`` in the authors' ``affinityNet`` code) and
Detectron2's Panoptic-DeepLab ``PanopticDeepLabTargetGenerator``; the edge convention is the
one of :class:`detectron2_cops.solvers.grid.GridGraph` (read its module docstring).

Sampling of the stride-``s`` grid (``s = 4`` in COPS): the grid of an ``H x W`` image has
``(h, w) = (ceil(H / s), ceil(W / s))`` pixels, and grid pixel ``(i, j)`` takes the label of image
pixel ``(min(s*i + s//2, H-1), min(s*j + s//2, W-1))`` -- the centre of its ``s x s`` cell (the
original code samples ``array[s//2::s, s//2::s]``: the same pixels when ``H`` and ``W`` are
multiples of ``s``, as in its training (crops of 512x1024, COCO padded to 640); otherwise the
original has ``ceil((H - s//2) / s)`` rows, fewer than the network's output, and the ``min`` here
clamps the last row/column so that the grid covers the whole image and matches the network).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2_cops.checks import as_float, as_int, as_int_set
from detectron2_cops.solvers.grid import GridGraph, edge_offsets

__all__ = ["COPSTargetGenerator", "grid_size", "grid_sample_coordinates"]


def grid_size(height: int, width: int, stride: int = 4) -> Tuple[int, int]:
    """Size ``(ceil(height / stride), ceil(width / stride))`` of the stride grid of an image.

    Raises:
        ValueError: a ``stride`` that is not an integer >= 1.
    """
    stride = as_int(stride, "stride", minimum=1)
    return -(-int(height) // stride), -(-int(width) // stride)


def grid_sample_coordinates(height: int, width: int, stride: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """Image rows and columns read by the stride grid (see the module docstring).

    Returns:
        ``rows [h] int64`` with ``rows[i] = min(stride*i + stride//2, height-1)`` and
        ``cols [w] int64`` likewise; ``(h, w) = grid_size(height, width, stride)``.
    Raises:
        ValueError: as :func:`grid_size`.
    """
    h, w = grid_size(height, width, stride)
    rows = np.minimum(np.arange(h, dtype=np.int64) * stride + stride // 2, max(height - 1, 0))
    cols = np.minimum(np.arange(w, dtype=np.int64) * stride + stride // 2, max(width - 1, 0))
    return rows, cols


class COPSTargetGenerator:
    """Semantic, panoptic and affinity training targets of COPS for one image.

    Args:
        thing_ids: contiguous class ids of the *thing* (partitionable) classes: a list, tuple,
            set, range, array or tensor of integers >= 0.
        class_ids: all contiguous class ids (things and stuff; integers >= 0, not
            ``ignore_label``), as ``thing_ids``; a segment with another ``category_id`` is an
            error. ``None``: any id in ``[0, label_divisor)`` other than ``ignore_label``.
        ignore_label: semantic label of void pixels (Detectron2: 255).
        label_divisor: panoptic id = ``class * label_divisor + instance index``.
        edge_distances: edge distances ``d`` in pixels of the stride grid
            (``MODEL.AFFINITY_HEAD.EDGE_DISTANCES``).
        edge_sampling_intervals: one sampling interval per distance (default all 1).
        stride: output stride of the grid in image pixels (``MODEL.AFFINITY_HEAD.COMMON_STRIDE``, 4).
        small_instance_area: thing segments with fewer image pixels than this (after
            augmentation) are *small* (``INPUT.SMALL_INSTANCE_AREA``).
        small_instance_weight: semantic loss weight of small-instance pixels
            (``INPUT.SMALL_INSTANCE_WEIGHT``; DeeperLab / Panoptic-DeepLab weighting).
        ignore_crowd_in_semantic: crowd pixels get ``ignore_label`` and weight 0 in the semantic
            targets (``INPUT.IGNORE_CROWD_IN_SEMANTIC``); otherwise they keep their class.
        ignore_stuff_in_affinities: stuff pixels get affinity weight 0, so every edge with a
            stuff endpoint is ignored (``INPUT.IGNORE_STUFF_IN_AFFINITIES``; the original).
        instance_affinity_weight: affinity weight of thing pixels; stuff pixels weigh 1
            (``INPUT.INSTANCE_AFFINITY_WEIGHT``, the original ``INSTANCE_LOSS_WEIGHT``). Thing
            pixels of small segments (area ``< small_instance_area``) weigh
            ``instance_affinity_weight * small_instance_weight`` (4 x 3 = 12 with the paper's
            settings), as the original.
        ignore_crowd_in_affinities: crowd pixels get affinity weight 0, as in the original COPS
            code ("Crowd would be always ignored in affinities"): a crowd region holds several
            instances, so neither "join" nor "cut" is known inside it.
        size_divisibility: if > 0, the affinity maps are computed on the image padded (bottom,
            right) to a multiple of it, as the original does for COCO (``MODEL.SIZE_DIVISIBILITY``
            640, the same padding the model applies to the image): the padding is one segment of
            its own whose pixels weigh ``padding_affinity_weight``.
        padding_affinity_weight: affinity weight of padding pixels (``INPUT.PADDING_AFFINITY_WEIGHT``;
            the original: 1, so edges from the image into the padding are cuts the model learns;
            0 ignores them).

    Affinity weights follow the original (``PanopticAffinityTargetGenerator``, the authors'
    ``target_generator.py`` lines 99-135 and 176-200): every grid pixel has a weight as above
    (0 on void); an edge weighs ``max(w_u, w_v)`` if both ``w_u > 0`` and ``w_v > 0``, else 0.

    Raises:
        ValueError: naming the argument: a non-integer (bool, float, str) ``label_divisor``,
            ``stride``, ``size_divisibility``, ``ignore_label`` or entry of ``thing_ids`` /
            ``class_ids``; a negative class id or one equal to ``ignore_label``; ``thing_ids``
            not within ``class_ids``; a negative or non-finite weight or area; distances and
            intervals refused by :class:`~detectron2_cops.solvers.grid.GridGraph`.

    ``__call__(panoptic, segments_info)`` returns a dict of tensors (``H, W``: image size;
    ``h, w = ceil(H/stride), ceil(W/stride)``: grid size; ``H_d, W_d``: map size of distance ``d``
    with sampling interval ``s_d``, ``ceil(h/s_d), ceil(w/s_d)``):

    * ``sem_seg`` ``[H, W] int64``: contiguous class, ``ignore_label`` on void (and on crowd if
      ``ignore_crowd_in_semantic``).
    * ``sem_seg_weights`` ``[H, W] float32``: 1; ``small_instance_weight`` on non-crowd thing
      segments with area ``< small_instance_area``; 0 where ``sem_seg == ignore_label``.
    * ``panoptic_ids`` ``[h, w] int64``: ``class * label_divisor + k`` with ``k = 0`` for stuff
      and ``k = 1, 2, ...`` for the thing segments of that class in ``segments_info`` order
      (crowd segments included); -1 on void. All stuff segments of one class share one id
      (stuff is not partitionable).
    * ``crowd_ids`` ``[C] int64``: panoptic ids of the crowd segments present on the grid.
    * ``gt_masks`` ``[G, h, w] bool`` and ``gt_classes`` ``[G] int64``: one mask per distinct
      non-crowd panoptic id present on the grid, in ``segments_info`` order.
    * ``pixel_weights`` ``[h, w] float32``: 0 on void and crowd, 1 elsewhere.
    * ``affinity_targets`` list of ``[2, H_d, W_d] float32`` per distance: 1 where the edge's
      endpoints have different panoptic ids (cut), 0 where equal, 0 at invalid positions.
    * ``affinity_weights`` list of ``[2, H_d, W_d] float32``: 0 at invalid positions, else the
      edge weight described above.

    With ``size_divisibility > 0`` the two affinity lists are computed on the padded image, so
    their ``h, w`` are those of the padded size ``(ceil(H / sd) * sd, ceil(W / sd) * sd)``; all
    other outputs keep the image's size.
    """

    def __init__(
        self,
        *,
        thing_ids: Iterable[int],
        class_ids: Optional[Iterable[int]] = None,
        ignore_label: int = 255,
        label_divisor: int = 1000,
        edge_distances: Sequence[int] = (1, 4, 16, 32, 64),
        edge_sampling_intervals: Optional[Sequence[int]] = None,
        stride: int = 4,
        small_instance_area: float = 4096,
        small_instance_weight: float = 3.0,
        ignore_crowd_in_semantic: bool = False,
        ignore_stuff_in_affinities: bool = False,
        instance_affinity_weight: float = 4.0,
        ignore_crowd_in_affinities: bool = True,
        size_divisibility: int = 0,
        padding_affinity_weight: float = 1.0,
    ):
        self.label_divisor = as_int(label_divisor, "label_divisor", minimum=1)
        self.stride = as_int(stride, "stride", minimum=1)
        self.size_divisibility = as_int(size_divisibility, "size_divisibility", minimum=0)
        self.ignore_label = as_int(ignore_label, "ignore_label")
        self.thing_ids = as_int_set(thing_ids, "thing_ids", minimum=0)
        self.class_ids = None if class_ids is None else as_int_set(class_ids, "class_ids", 0)
        if self.ignore_label in self.thing_ids | (self.class_ids or frozenset()):
            raise ValueError(
                f"thing_ids/class_ids contain ignore_label {self.ignore_label}: void pixels and "
                "that class could not be told apart"
            )
        if self.class_ids is not None and not self.thing_ids <= self.class_ids:
            raise ValueError(
                f"thing_ids must be a subset of class_ids; not in class_ids: "
                f"{sorted(self.thing_ids - self.class_ids)}"
            )
        self.small_instance_area = as_float(small_instance_area, "small_instance_area", 0)
        self.small_instance_weight = as_float(small_instance_weight, "small_instance_weight", 0)
        self.instance_affinity_weight = as_float(instance_affinity_weight, "instance_affinity_weight", 0)
        self.padding_affinity_weight = as_float(padding_affinity_weight, "padding_affinity_weight", 0)
        # GridGraph checks the distances and intervals.
        probe = GridGraph(0, 0, edge_distances, edge_sampling_intervals)
        self.edge_distances = probe.edge_distances
        self.edge_sampling_intervals = probe.edge_sampling_intervals
        self.ignore_crowd_in_semantic = bool(ignore_crowd_in_semantic)
        self.ignore_stuff_in_affinities = bool(ignore_stuff_in_affinities)
        self.ignore_crowd_in_affinities = bool(ignore_crowd_in_affinities)

    def __repr__(self) -> str:
        fields = ("label_divisor", "stride", "edge_distances", "edge_sampling_intervals")
        shown = ", ".join(f"{n}={getattr(self, n)}" for n in fields)
        return f"{type(self).__name__}(num_thing_classes={len(self.thing_ids)}, {shown})"

    def _segment_table(self, segments_info: Sequence[dict]):
        """Per-segment arrays (ids, classes, is_thing, is_crowd, panoptic ids), checked."""
        n = len(segments_info)
        ids = np.zeros(n, dtype=np.int64)
        classes = np.zeros(n, dtype=np.int64)
        is_crowd = np.zeros(n, dtype=bool)
        for k, seg in enumerate(segments_info):
            where = f"segments_info[{k}]"
            if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
                raise ValueError(
                    f"{where} must be a dict with 'id' and 'category_id', got {seg!r}"[:300]
                )
            ids[k] = as_int(seg["id"], f"{where}['id']", minimum=1)  # 0 is void
            classes[k] = cat = as_int(seg["category_id"], f"{where}['category_id']")
            crowd = seg.get("iscrowd", 0)
            if not isinstance(crowd, (bool, np.bool_)):
                crowd = as_int(crowd, f"{where}['iscrowd'] (0 or 1)", minimum=0, maximum=1)
            is_crowd[k] = bool(crowd)
            known = (cat in self.class_ids if self.class_ids is not None
                     else 0 <= cat < self.label_divisor and cat != self.ignore_label)
            if not known:
                raise ValueError(
                    f"{where} (segment id {ids[k]}) has category_id {cat}, which is not a "
                    "contiguous class id of the dataset"
                )
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"segments_info has duplicate segment ids {uniq[counts > 1].tolist()}")
        is_thing = np.array([c in self.thing_ids for c in classes.tolist()], dtype=bool)
        instance = np.zeros(n, dtype=np.int64)
        counters: Dict[int, int] = {}
        for k in np.flatnonzero(is_thing).tolist():
            c = int(classes[k])
            counters[c] = instance[k] = counters.get(c, 0) + 1
        crowded = [c for c, count in counters.items() if count >= self.label_divisor]
        if crowded:
            raise ValueError(
                f"class {crowded[0]} has more than {self.label_divisor - 1} thing segments; they "
                f"do not fit below label_divisor={self.label_divisor}"
            )
        pan_ids = classes * self.label_divisor + instance
        return ids, classes, is_thing, is_crowd, pan_ids

    # ------------------------------------------------------------------ main entry
    def __call__(self, panoptic: np.ndarray, segments_info: Sequence[dict]) -> Dict[str, object]:
        """Compute the targets (see the class docstring for the output).

        Args:
            panoptic: ``[H, W]`` integer array of segment ids (dataset ids decoded from the
                RGB PNG with :func:`~detectron2_cops.data.panoptic_utils.rgb2id`; 0 = void).
            segments_info: Detectron2 dataset-dict format: dicts with integer ``id`` and
                contiguous ``category_id`` (Python or NumPy ints) and ``iscrowd`` (0/1 or a
                bool; 0 when absent).
        Raises:
            ValueError: naming the segment: ``panoptic`` not a 2-D integer array; a segment that
                is not a dict with ``id`` and ``category_id``; an ``id`` or ``category_id``
                that is not an integer (``3.0``, ``"3"``, ``True``), an id <= 0 or repeated;
                a ``category_id`` that is not a class of the dataset; an ``iscrowd`` other than
                0, 1 or a bool (``"0"``, ``0.5``, ``None``); more thing segments of one class
                than ``label_divisor - 1``; a non-zero id in ``panoptic`` that is not in
                ``segments_info``.
        """
        panoptic = np.asarray(panoptic)
        if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
            raise ValueError(
                f"panoptic must be an [H, W] integer array of segment ids, got shape "
                f"{list(panoptic.shape)} and dtype {panoptic.dtype}"
            )
        panoptic = panoptic.astype(np.int64, copy=False)
        H, W = panoptic.shape
        ids, classes, is_thing, is_crowd, pan_ids = self._segment_table(segments_info)
        n = len(ids)

        # ---- pixel -> segment index, vectorised with a sorted lookup; void pixels get index n,
        # so every per-segment lookup table below has n + 1 entries (the last one for void).
        seg_index = np.full((H, W), n, dtype=np.int64)
        if n > 0:
            order = np.argsort(ids, kind="stable")
            pos = np.minimum(np.searchsorted(ids[order], panoptic), n - 1)
            found = ids[order][pos] == panoptic
            seg_index[found] = order[pos[found]]
        unknown = (seg_index == n) & (panoptic != 0)
        if unknown.any():
            bad = np.unique(panoptic[unknown])
            raise ValueError(
                f"panoptic has segment ids {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''} "
                "that are not in segments_info"
            )
        area = np.bincount(seg_index.ravel(), minlength=n + 1)[:n]
        small = is_thing & ~is_crowd & (area < self.small_instance_area)  # small instances, not crowd

        def lut(values, void):
            return np.append(np.asarray(values), np.asarray(void, dtype=np.asarray(values).dtype))

        # ---- full resolution semantic targets
        sem_values = classes.copy()
        if self.ignore_crowd_in_semantic:
            sem_values[is_crowd] = self.ignore_label
        sem_seg = lut(sem_values, self.ignore_label)[seg_index]
        weight_values = np.ones(n, dtype=np.float32)
        weight_values[small] = self.small_instance_weight
        sem_seg_weights = lut(weight_values, 0.0)[seg_index]
        sem_seg_weights[sem_seg == self.ignore_label] = 0.0

        # ---- stride grid
        rows, cols = grid_sample_coordinates(H, W, self.stride)
        grid_index = seg_index[rows[:, None], cols[None, :]]
        gvalid = grid_index < n
        panoptic_ids = lut(pan_ids, -1)[grid_index]
        grid_crowd = lut(is_crowd, False)[grid_index]
        pixel_weights = (gvalid & ~grid_crowd).astype(np.float32)

        on_grid = np.unique(grid_index[gvalid]).tolist()  # segments on the grid, in segments_info order
        crowd_ids = list(dict.fromkeys(int(pan_ids[k]) for k in on_grid if is_crowd[k]))
        mask_ids = list(dict.fromkeys(int(pan_ids[k]) for k in on_grid if not is_crowd[k]))
        mask_id_array = np.asarray(mask_ids, dtype=np.int64)
        # Pixels of crowd regions never belong to a ground-truth mask (they matter only if a
        # crowd stuff segment shared its class id with a non-crowd stuff segment).
        gt_masks = (panoptic_ids[None] == mask_id_array[:, None, None]) & ~grid_crowd[None]
        gt_classes = mask_id_array // self.label_divisor

        # ---- affinities on the grid graph (of the padded image if size_divisibility > 0)
        node_weight = np.where(is_thing, self.instance_affinity_weight, 1.0)
        node_weight[small] *= self.small_instance_weight
        if self.ignore_stuff_in_affinities:
            node_weight[~is_thing] = 0.0
        if self.ignore_crowd_in_affinities:
            node_weight[is_crowd] = 0.0
        aff_ids, aff_weight = lut(pan_ids, -1), lut(node_weight, 0.0)
        sd = self.size_divisibility
        Hp, Wp = (-(-H // sd) * sd, -(-W // sd) * sd) if sd > 0 else (H, W)
        if (Hp, Wp) == (H, W):
            aff_index = grid_index
        else:
            # Padding pixels get index n + 1: their own segment (id -2, never a real id or void).
            padded = np.full((Hp, Wp), n + 1, dtype=np.int64)
            padded[:H, :W] = seg_index
            prow, pcol = grid_sample_coordinates(Hp, Wp, self.stride)
            aff_index = padded[prow[:, None], pcol[None, :]]
            aff_ids = np.append(aff_ids, -2)
            aff_weight = np.append(aff_weight, self.padding_affinity_weight)
        affinity_targets, affinity_weights = self.affinity_targets(
            aff_ids[aff_index], aff_weight[aff_index].astype(np.float32)
        )

        return {
            "sem_seg": torch.from_numpy(sem_seg),
            "sem_seg_weights": torch.from_numpy(sem_seg_weights),
            "panoptic_ids": torch.from_numpy(panoptic_ids),
            "crowd_ids": torch.tensor(crowd_ids, dtype=torch.int64),
            "gt_masks": torch.from_numpy(np.ascontiguousarray(gt_masks)),
            "gt_classes": torch.from_numpy(gt_classes),
            "pixel_weights": torch.from_numpy(pixel_weights),
            "affinity_targets": [torch.from_numpy(t) for t in affinity_targets],
            "affinity_weights": [torch.from_numpy(w) for w in affinity_weights],
        }

    # ------------------------------------------------------------------ affinities
    def affinity_targets(
        self, panoptic_ids: np.ndarray, node_weights: np.ndarray
    ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """Edge targets and weights on the grid graph, one ``[2, H_d, W_d]`` map per distance.

        Vectorised with array slicing: for distance ``d`` with ``(lo, hi) = edge_offsets(d)``,
        channel 0 at anchor ``(y, x)`` compares ``(y - lo, x)`` with ``(y + hi, x)``, i.e. the
        slices ``[0 : h-d]`` and ``[d : h]`` written to anchor rows ``[lo : h-hi]``; channel 1
        likewise along x; then every ``s``-th anchor is kept (GridGraph convention). The target
        is 1 where the two ids differ; the weight is ``max(w_u, w_v)`` where both are > 0, else 0
        (the original, ``target_generator.py`` lines 170-200).

        Args:
            panoptic_ids: ``[h, w] int64`` node labels.
            node_weights: ``[h, w] float32`` per-node affinity weights (0: edges ignored).
        Returns:
            ``(targets, weights)``: lists of ``[2, H_d, W_d] float32`` (see the class docstring).
        """
        P = np.asarray(panoptic_ids)
        Wn = np.asarray(node_weights, dtype=np.float32)
        h, w = P.shape
        targets, weights = [], []

        def along(axis: int, start: int, stop: int):
            index = [slice(None), slice(None)]
            index[axis] = slice(start, stop)
            return tuple(index)

        for d, s in zip(self.edge_distances, self.edge_sampling_intervals):
            lo, hi = edge_offsets(d)
            t = np.zeros((2, h, w), dtype=np.float32)
            wt = np.zeros((2, h, w), dtype=np.float32)
            for axis in (0, 1):  # channel 0: edges along y; channel 1: along x
                n = P.shape[axis]
                if n <= d:
                    continue  # no edge of this distance fits: all positions invalid
                a, b, anchor = along(axis, 0, n - d), along(axis, d, n), along(axis, lo, n - hi)
                t[axis][anchor] = P[a] != P[b]
                wa, wb = Wn[a], Wn[b]
                wt[axis][anchor] = np.where((wa > 0) & (wb > 0), np.maximum(wa, wb), 0.0)
            targets.append(np.ascontiguousarray(t[:, ::s, ::s]))
            weights.append(np.ascontiguousarray(wt[:, ::s, ::s]))
        return targets, weights
