"""Inference post-processing of COPS: AMWC on the stride-4 grid -> Detectron2's panoptic outputs.

COPS (Abbas & Swoboda, NeurIPS 2021, Sec. 3.1) obtains its panoptic segmentation by solving the
asymmetric multiway cut (AMWC) on the grid of the decoder output (output stride 4) with the
calibrated semantic costs ``c_V`` and edge costs ``c_E``. This module turns that solution into
Detectron2's standard model outputs (``panoptic_seg``, ``sem_seg``, ``instances``, as
Detectron2's ``projects/Panoptic-DeepLab`` and ``PanopticFPN``), see :class:`AMWCPostProcessor`.

Post-processors are found through :data:`POST_PROCESSOR_REGISTRY` by the name in
``MODEL.COPS.POST_PROCESSOR``; :class:`AMWCPostProcessor` is the default.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.structures import Boxes, Instances
from detectron2.utils.registry import Registry

from detectron2_cops import _C
from detectron2_cops.checks import as_choice, as_float, as_int, as_int_list, as_int_set
from detectron2_cops.data.datasets import get_panoptic_metadata
from detectron2_cops.solvers import GridGraph, solve_amwc_batch
from detectron2_cops.solvers.grid import cached_grid_graph

__all__ = [
    "POST_PROCESSOR_REGISTRY",
    "AMWCPostProcessor",
    "build_post_processor",
    "cops_dataset_metadata",
]

POST_PROCESSOR_REGISTRY = Registry("POST_PROCESSOR")
POST_PROCESSOR_REGISTRY.__doc__ = """
Registry for the inference post-processors of COPS (semantic and cut logits -> Detectron2's
outputs), picked by the name in ``cfg.MODEL.COPS.POST_PROCESSOR`` and built with ``cfg``. As
:class:`AMWCPostProcessor`, one is callable as ``post_processor(sem_seg_logits, cut_logits,
image_sizes, output_sizes, calibration=None)`` (one dict per image) and provides ``postprocess``,
the same call without the input checks, which the meta-architecture uses for its heads' outputs.
"""


def cops_dataset_metadata(cfg) -> dict:
    """Panoptic metadata of the dataset a COPS model is built for: ``cfg.DATASETS.TRAIN[0]``, or
    ``TEST[0]`` when no training set is named (as Detectron2's Panoptic-DeepLab reads
    ``MetadataCatalog.get(DATASETS.TRAIN[0])``).

    Returns:
        dict of :func:`detectron2_cops.data.get_panoptic_metadata` plus ``dataset_name``:
        ``thing_ids`` (contiguous ids of the thing classes, i.e. the values of
        ``thing_dataset_id_to_contiguous_id``), ``class_ids``, ``label_divisor`` (default 1000),
        ``ignore_label``, ``metadata``.
    Raises:
        ValueError: no dataset named in the config, an unregistered or non-panoptic dataset, or
            ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` other than the dataset's class count (its largest
            contiguous class id + 1).
    """
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError(
            "COPS needs the panoptic metadata (thing classes, label_divisor) of a dataset: "
            "cfg.DATASETS.TRAIN and cfg.DATASETS.TEST are both empty"
        )
    info = dict(get_panoptic_metadata(names[0]), dataset_name=names[0])
    num_classes = as_int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "MODEL.SEM_SEG_HEAD.NUM_CLASSES")
    top = max(info["class_ids"]) if info["class_ids"] else -1
    if top + 1 != num_classes:
        # Larger: the head would predict classes the dataset does not have (an error only at
        # evaluation, "unknown to dataset"); smaller: classes without a channel.
        raise ValueError(
            f"dataset '{names[0]}' has contiguous class ids 0..{top} ({top + 1} classes), but "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}; set it to {top + 1}"
        )
    return info


def build_post_processor(cfg):
    """Build the post-processor named by ``cfg.MODEL.COPS.POST_PROCESSOR`` from
    :data:`POST_PROCESSOR_REGISTRY` (Detectron2 raises ``KeyError`` for an unknown name)."""
    return POST_PROCESSOR_REGISTRY.get(cfg.MODEL.COPS.POST_PROCESSOR)(cfg)


RESIZE_MODES = ("nearest", "nearest-exact")
LOGITS_RESIZE_MODES = ("nearest", "bilinear")
AREA_UNITS = ("input", "output")
INSTANCE_SCORE_EDGE_MEANS = ("positions", "edges")


def _resize_index(out_len: int, in_len: int, mode: str) -> torch.Tensor:
    """``[out_len] int64``: the input row (or column) that ``F.interpolate(..., size=out_len,
    mode=mode)`` reads for each output row, ``mode`` ``"nearest"`` (``floor(y * in / out)``, the
    authors' ``interpolate_mask``) or ``"nearest-exact"`` (``floor((y + 0.5) * in / out)``), taken
    from PyTorch itself so that both follow its rounding exactly."""
    src = torch.arange(in_len, dtype=torch.float64).view(1, 1, in_len)
    return F.interpolate(src, size=out_len, mode=mode)[0, 0].to(torch.int64)


def _linear_resize_weights(out_len: int, in_len: int, stride: int, grid_len: int, mode: str) -> torch.Tensor:
    """``[grid_len, out_len] float64`` weights of the 1-d version of
    :meth:`AMWCPostProcessor._upsampled_logits`: entry ``[q, y]`` is the weight of grid row ``q``
    in output row ``y`` after linear upsampling by ``stride`` (``align_corners=False``, cropped to
    ``in_len``) and the resize to ``out_len`` (``mode`` ``"bilinear"``: linear; ``"nearest"``: the
    row :func:`_resize_index` reads). Both are separable, so the upsampled logits are
    ``A^T @ logits @ B`` with ``A``, ``B`` these weights for rows and columns."""
    eye = torch.eye(grid_len, dtype=torch.float64)[None]
    w = F.interpolate(eye, scale_factor=stride, mode="linear", align_corners=False)[0, :, :in_len]
    if out_len != in_len:
        if mode == "bilinear":
            w = F.interpolate(w[None], size=out_len, mode="linear", align_corners=False)[0]
        else:
            w = w[:, _resize_index(out_len, in_len, mode)]
    return w


def _nearest_index(out_len: int, in_len: int, stride: int, grid_len: int, mode: str) -> torch.Tensor:
    """Grid row (or column) read by each output row (column), nearest-neighbour sampling:
    output row ``y`` of ``out_len`` reads input-image row :func:`_resize_index` (``mode``), which
    lies in grid row ``row // stride`` (grid pixel ``i`` covers image rows ``[stride * i, stride *
    (i + 1))``, as nearest upsampling by ``stride`` maps them)."""
    pos = _resize_index(out_len, in_len, mode)
    return torch.div(pos, stride, rounding_mode="floor").clamp_(max=max(grid_len - 1, 0))


def _nearest_resize(grid: np.ndarray, row_count: np.ndarray, col_count: np.ndarray) -> np.ndarray:
    """``grid[np.ix_(rows, cols)]`` for the non-decreasing :func:`_nearest_index` maps ``rows``,
    ``cols``, given as their per-cell counts (``row_count[r]`` output rows read grid row ``r``):
    each grid row (column) is repeated, C order, several times faster than the fancy gather."""
    return np.repeat(np.repeat(grid, col_count, axis=1), row_count, axis=0)


@POST_PROCESSOR_REGISTRY.register()
class AMWCPostProcessor:
    """Panoptic, semantic and instance outputs from the AMWC solution on the stride-4 grid.

    For each image of the batch (``(H, W)`` its size in the padded input tensor, ``(height,
    width)`` the requested output size):

    1. costs: ``(c_V, c_E) = calibration(sem_seg_logits, cut_logits)`` (COPS' learned affine
       calibration, :class:`detectron2_cops.layers.CostCalibration`); without a calibration
       ``c_V = -logits``, ``c_E = -cut_logits`` (the original ``ComputeMulticutCosts``);
    2. the AMWC is solved with GAEC (+ local search) by
       :func:`detectron2_cops.solvers.solve_amwc_batch` on the CPU, all images of the batch in
       parallel, thing classes partitionable, on the whole padded grid ``h x w`` (the authors'
       ``PanopticAffinityAMWC``; ``solve_padded_grid``) or on the image's part of it,
       ``(ceil(H / 4), ceil(W / 4))`` grid pixels;
    3. segments: the AMWC clusters; all stuff clusters of one class form one segment (stuff is
       not partitionable, as in the panoptic format and Panoptic-DeepLab); every thing cluster is
       one instance;
    4. the grid segment map is resized to ``(height, width)`` by nearest-neighbour sampling: the
       output pixel's row and column in the ``H x W`` input (``F.interpolate`` with
       ``resize_mode``, the authors' ``interpolate_mask``: ``"nearest"``), then its grid cell
       (nearest upsampling by the stride);
    5. segments smaller than ``stuff_area`` (stuff) or ``instance_area`` (things) become void
       (id 0), areas counted in ``area_units``: ``"input"``, network-input pixels of the solved
       grid (``stride**2`` per grid pixel, padding included: the authors' mask areas of the
       upsampled padded prediction) or ``"output"``, pixels of the output image; segments that
       no output pixel reads are dropped too. The remaining segments get ids ``1, 2, ...`` in
       the order of their first grid pixel (row-major). Thing clusters with fewer than
       ``min_thing_cluster_size`` grid pixels are void whatever their area.

    Outputs, one dict per image:

    * ``"panoptic_seg"``: ``(Tensor[height, width] int32, segments_info)``; ``segments_info`` is
      a list of ``{"id": int >= 1, "category_id": contiguous class id, "isthing": bool,
      "area": output pixels}`` (Detectron2's panoptic output format);
    * ``"sem_seg"``: ``[K, height, width] uint8``, one-hot of the AMWC node labels (before the
      area filter of step 5), resized as in step 4: the authors' ``"sem_seg"`` output
      (``panoptic_seg_affinity.py``), which the paper's Cityscapes mIoU scores. Its consumers
      (``SemSegEvaluator``, the ``Visualizer``, ...) take ``argmax(dim=0)``; ``.float()`` gives
      a float32 one-hot;
    * ``"sem_seg_head"`` (when ``predict_sem_seg_head``, the costliest output):
      ``[K, height, width] float32`` semantic logits, bilinearly upsampled by ``common_stride``,
      cropped to the image and resized to the output size with ``logits_resize_mode``
      (``"nearest"``: the authors' ``"orig_sem_seg"``; ``"bilinear"``: ``sem_seg_postprocess``);
      logits, as Detectron2's ``sem_seg`` outputs;
    * ``"instances"`` (when ``predict_instances``): ``Instances((height, width))`` with one entry
      per thing segment of ``panoptic_seg``: ``pred_masks [M, height, width] bool``,
      ``pred_classes [M] int64``, ``pred_boxes`` (tight boxes of the masks, ``Boxes``) and
      ``scores [M] float32``.

    Instance score (the original COPS ``MaskScore``, the authors' ``losses.py``)::

        score = mean_{mask} semantic_logit[class]      (output pixels, logits as "sem_seg_head")
              + edge term

    ``instance_score_edge_mean="positions"`` (the authors' ``MaskScore``): the mask is read on
    the grid at the output pixels ``(s * i + s // 2, s * j + s // 2)`` (their ``mask[2::4,
    2::4]``), and for each distance ``d`` the cut logits of the edges leaving the mask minus those
    of the edges inside it are summed and divided by the number of positions of the distance's
    whole (padded) ``[2, H_d, W_d]`` map, non-edges included; the edge term is the sum over the
    distances. ``"edges"``: the mask is the segment's grid pixels, and the edge term is the mean
    cut logit over the edges leaving the mask minus the mean over the edges inside it, over all
    distances together (an empty set contributes 0).

    Args (with the config key :meth:`from_config` reads; thing ids from the dataset):
        num_classes: K, number of semantic classes (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``).
        thing_ids: contiguous ids of the thing (partitionable) classes.
        edge_distances, edge_sampling_intervals: edge distances ``d`` in pixels of the stride
            grid and one sampling interval each, default 1 (``MODEL.AFFINITY_HEAD.EDGE_*``).
        common_stride: stride of the grid in input pixels (``MODEL.AFFINITY_HEAD.COMMON_STRIDE``).
        stuff_area, instance_area: minimum areas of a stuff / thing segment, in ``area_units``
            (``MODEL.COPS.STUFF_AREA``, ``INSTANCE_AREA``).
        predict_instances, predict_sem_seg_head, local_search: also return ``instances`` /
            ``sem_seg_head``; run the AMWC local search after GAEC (``MODEL.COPS.<NAME>``).
        solve_padded_grid, area_units, resize_mode, logits_resize_mode,
            instance_score_edge_mean: the conventions of steps 2, 5, 4, of ``sem_seg_head`` and
            the instance score above (``MODEL.COPS.<NAME>``); the defaults are the authors'.
        num_threads: threads of the batch solver, 0 = one per image, at most the CPU count
            (``MODEL.COPS.NUM_THREADS``).
        min_thing_cluster_size: thing clusters with fewer *grid* pixels become void (the COPS
            code's ``IGNORE_INSTANCE_SIZE_AMC // 4``; ``MODEL.COPS.MIN_THING_CLUSTER_SIZE``).
    Raises:
        ValueError: naming the argument and its key: a count, size or id that is not an integer
            (bools and ``4.0`` included) in range (``num_threads``, thing ids >= 0, thing ids <
            ``num_classes``, the others >= 1), no distance or not one interval per distance, an
            area that is not a finite number >= 0, a convention not among its choices. On call:
            see :meth:`__call__`.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        thing_ids: Sequence[int],
        edge_distances: Sequence[int],
        edge_sampling_intervals: Optional[Sequence[int]] = None,
        common_stride: int = 4,
        stuff_area: float = 0,
        instance_area: float = 0,
        predict_instances: bool = True,
        predict_sem_seg_head: bool = False,
        local_search: bool = False,
        num_threads: int = 0,
        min_thing_cluster_size: int = 1,
        solve_padded_grid: bool = True,
        area_units: str = "input",
        resize_mode: str = "nearest",
        logits_resize_mode: str = "nearest",
        instance_score_edge_mean: str = "positions",
    ):
        self.num_classes = as_int(num_classes, "num_classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES)", 1)
        self.thing_ids = sorted(as_int_set(thing_ids, "thing_ids", 0))
        if self.thing_ids and self.thing_ids[-1] >= self.num_classes:
            raise ValueError(f"thing_ids must lie in [0, num_classes={self.num_classes}), got {self.thing_ids}")
        self.partitionable = np.isin(np.arange(self.num_classes), self.thing_ids)
        self.edge_distances = as_int_list(edge_distances, "edge_distances (MODEL.AFFINITY_HEAD.EDGE_DISTANCES)", 1)
        if edge_sampling_intervals is None:
            edge_sampling_intervals = [1] * len(self.edge_distances)
        self.edge_sampling_intervals = as_int_list(
            edge_sampling_intervals, "edge_sampling_intervals (MODEL.AFFINITY_HEAD.EDGE_SAMPLING_INTERVALS)", 1
        )
        if not self.edge_distances or len(self.edge_sampling_intervals) != len(self.edge_distances):
            raise ValueError(
                f"need at least one edge distance and one sampling interval per distance, got "
                f"edge_distances={self.edge_distances}, edge_sampling_intervals={self.edge_sampling_intervals}"
            )
        self.common_stride = as_int(common_stride, "common_stride (MODEL.AFFINITY_HEAD.COMMON_STRIDE)", 1)
        self.stuff_area = as_float(stuff_area, "stuff_area (MODEL.COPS.STUFF_AREA)", 0)
        self.instance_area = as_float(instance_area, "instance_area (MODEL.COPS.INSTANCE_AREA)", 0)
        self.num_threads = as_int(num_threads, "num_threads (MODEL.COPS.NUM_THREADS)", 0, 2**31 - 1)
        self.min_thing_cluster_size = as_int(
            min_thing_cluster_size, "min_thing_cluster_size (MODEL.COPS.MIN_THING_CLUSTER_SIZE)", 1
        )
        self.predict_instances = bool(predict_instances)
        self.predict_sem_seg_head = bool(predict_sem_seg_head)
        self.local_search = bool(local_search)
        self.solve_padded_grid = bool(solve_padded_grid)
        for name, value, choices in (
            ("area_units", area_units, AREA_UNITS),
            ("resize_mode", resize_mode, RESIZE_MODES),
            ("logits_resize_mode", logits_resize_mode, LOGITS_RESIZE_MODES),
            ("instance_score_edge_mean", instance_score_edge_mean, INSTANCE_SCORE_EDGE_MEANS),
        ):
            setattr(self, name, as_choice(value, f"{name} (MODEL.COPS.{name.upper()})", choices))
        # (sizes) -> the banded resize matrices of _semantic_sums and their diagonals
        self._band_cache: Dict[tuple, tuple] = {}

    @classmethod
    def from_config(cls, cfg):
        """The keys named in the class docstring and the thing classes of the dataset
        (:func:`cops_dataset_metadata`)."""
        head = cfg.MODEL.AFFINITY_HEAD
        cops_keys = ("stuff_area", "instance_area", "predict_instances", "predict_sem_seg_head", "local_search",
                     "num_threads", "min_thing_cluster_size", "solve_padded_grid", "area_units", "resize_mode",
                     "logits_resize_mode", "instance_score_edge_mean")  # MODEL.COPS.<NAME>
        return dict(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            thing_ids=cops_dataset_metadata(cfg)["thing_ids"],
            edge_distances=list(head.EDGE_DISTANCES),
            edge_sampling_intervals=list(head.EDGE_SAMPLING_INTERVALS),
            common_stride=head.COMMON_STRIDE,
            **{name: getattr(cfg.MODEL.COPS, name.upper()) for name in cops_keys},
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)}" for n in ("edge_distances", "stuff_area", "instance_area"))
        return (f"{type(self).__name__}(num_classes={self.num_classes}, "
                f"num_thing_classes={len(self.thing_ids)}, {shown})")

    def graph(self, height: int, width: int) -> GridGraph:
        """The (cached, :func:`~detectron2_cops.solvers.grid.cached_grid_graph`) :class:`GridGraph`
        of a ``height x width`` grid with this post-processor's edge distances and sampling intervals."""
        return cached_grid_graph(int(height), int(width), tuple(self.edge_distances),
                                 tuple(self.edge_sampling_intervals))

    # ------------------------------------------------------------------ main entry
    def __call__(
        self,
        sem_seg_logits: torch.Tensor,
        cut_logits: Sequence[torch.Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        output_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        calibration: Optional[torch.nn.Module] = None,
    ) -> List[dict]:
        """Post-process a batch (see the class docstring).

        Args:
            sem_seg_logits: ``[B, K, h, w] float`` semantic logits on the stride grid of the
                padded input batch.
            cut_logits: one ``[B, 2, ceil(h / s), ceil(w / s)] float`` cut-logit map per edge
                distance (positive = the two pixels belong to different segments).
            image_sizes: per image ``(H, W)``, its size inside the padded input (input pixels;
                ``ImageList.image_sizes``).
            output_sizes: per image ``(height, width)`` of the outputs (default: ``image_sizes``).
            calibration: module mapping ``(sem_seg_logits, cut_logits)`` to ``(c_V, c_E)`` of the
                same shapes (``CostCalibration``), or None for ``c = -logits``.
        Returns:
            ``B`` dicts with the outputs of the class docstring, on ``sem_seg_logits``' device.
        Raises:
            ValueError: a tensor of the wrong type, rank, shape or dtype; not one size per image;
                a size that is not two positive integers; an image larger than the grid covers;
                costs the solver refuses (NaN / inf, float64 beyond the float32 range it reads).
        """
        image_sizes, output_sizes = self._check_inputs(sem_seg_logits, cut_logits, image_sizes, output_sizes)
        return self.postprocess(sem_seg_logits, cut_logits, image_sizes, output_sizes, calibration)

    def _check_inputs(self, sem_seg_logits, cut_logits, image_sizes, output_sizes):
        """The checks of :meth:`__call__`; returns the sizes as lists of int pairs."""
        x = sem_seg_logits
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.num_classes or not x.is_floating_point():
            got = f"{list(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"sem_seg_logits must be a float [B, K, h, w] tensor, K = {self.num_classes}, got {got}")
        B, K, h, w = x.shape
        if not isinstance(cut_logits, (list, tuple)) or len(cut_logits) != len(self.edge_distances):
            got = f"{len(cut_logits)} maps" if isinstance(cut_logits, (list, tuple)) else type(cut_logits).__name__
            raise ValueError(
                f"cut_logits must be a list of one [B, 2, H_d, W_d] map per edge distance "
                f"{self.edge_distances}, got {got}"
            )
        for d, s, m in zip(self.edge_distances, self.edge_sampling_intervals, cut_logits):
            want = [B, 2, -(-h // s), -(-w // s)]
            if not isinstance(m, torch.Tensor) or list(m.shape) != want or not m.is_floating_point():
                got = f"{list(m.shape)} {m.dtype}" if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(
                    f"cut_logits for edge distance {d} (sampling interval {s}) must be a float tensor "
                    f"of shape {want} for sem_seg_logits of shape {list(x.shape)}, got {got}"
                )

        def pairs(name, given):
            out = [as_int_list(size, f"{name}[{i}]", 1) for i, size in enumerate(given)]
            if len(out) != B or any(len(size) != 2 for size in out):
                raise ValueError(f"{name} must hold one pair (height, width) per image ({B}), got {list(given)!r}")
            return out

        image_sizes = pairs("image_sizes", image_sizes)
        output_sizes = image_sizes if output_sizes is None else pairs("output_sizes", output_sizes)
        for i, (H, W) in enumerate(image_sizes):
            if H > h * self.common_stride or W > w * self.common_stride:
                raise ValueError(
                    f"image_sizes[{i}] = {(H, W)} does not fit into the grid of sem_seg_logits "
                    f"({h}x{w} at stride {self.common_stride} covers "
                    f"{h * self.common_stride}x{w * self.common_stride} input pixels)"
                )
        return image_sizes, output_sizes

    @torch.no_grad()
    def postprocess(
        self,
        sem_seg_logits: torch.Tensor,
        cut_logits: Sequence[torch.Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        output_sizes: Sequence[Tuple[int, int]],
        calibration: Optional[torch.nn.Module] = None,
    ) -> List[dict]:
        """:meth:`__call__` without its input checks (``output_sizes`` required, sizes as Python
        ints), for a caller that produced the inputs itself: the COPS meta-architecture passes
        its heads' outputs and the sizes it checked."""
        cut_logits = list(cut_logits)
        if calibration is not None:
            sem_costs, edge_costs = calibration(sem_seg_logits, cut_logits)
        else:
            sem_costs, edge_costs = -sem_seg_logits, [-m for m in cut_logits]

        def image_maps(maps, b, hc, wc):  # image b's part of per-distance maps, float32 NumPy
            return [
                m[b, :, : -(-hc // s), : -(-wc // s)].detach().float().cpu().numpy()
                for m, s in zip(maps, self.edge_sampling_intervals)
            ]

        # One AMWC instance per image, on the whole grid or the image's part of it.
        instances, crops = [], []
        h, w = sem_seg_logits.shape[-2:]
        for b, (H, W) in enumerate(image_sizes):
            if self.solve_padded_grid:
                hc, wc = h, w
            else:
                hc, wc = -(-H // self.common_stride), -(-W // self.common_stride)
            graph = self.graph(hc, wc)
            node_costs = sem_costs[b, :, :hc, :wc].detach().permute(1, 2, 0).reshape(hc * wc, -1)
            edge_values = graph.maps_to_edge_values(image_maps(edge_costs, b, hc, wc))
            instances.append(
                (node_costs.float().cpu().numpy(), graph.edges, edge_values.astype(np.float32, copy=False),
                 self.partitionable)
            )
            crops.append((hc, wc))
        try:
            results = solve_amwc_batch(instances, local_search=self.local_search, num_threads=self.num_threads)
        except ValueError as err:  # e.g. NaN logits, or float64 ones beyond the float32 range the solve reads
            raise ValueError(
                f"AMWCPostProcessor: the costs from sem_seg_logits and cut_logits (solved as "
                f"float32) are not valid AMWC costs: {err}"
            ) from None

        return [
            self._image_outputs(
                result, hc, wc, tuple(image_sizes[b]), tuple(output_sizes[b]), sem_seg_logits[b],
                # the instance score's edge term: on the solved grid, or the whole map
                image_maps(cut_logits, b, *((h, w) if self.instance_score_edge_mean == "positions" else (hc, wc))),
                sem_seg_logits.device,
            )
            for b, (result, (hc, wc)) in enumerate(zip(results, crops))
        ]

    def _upsampled_logits(self, logits, image_size, output_size):
        """``[K, height, width]`` upsampled logits of one image (``logits``: its ``[K, h, w]``
        grid): bilinear upsampling by ``common_stride`` (``align_corners=False``), then
        ``sem_seg_postprocess`` (crop to the image, bilinear resize to the output size), without
        the work that does not change the result: only the image's grid cells plus one row and
        column of context are upsampled (output row ``y < H`` reads grid rows
        ``floor((y + 0.5) / s - 0.5)`` and the next one), straight into the ``H x W`` crop
        (ATen's ``upsample_bilinear2d`` with size and scale, as ``F.interpolate(scale_factor=s)``
        calls it); the resize to the output size (``logits_resize_mode``) is skipped when it is
        the identity."""
        H, W = image_size
        s = self.common_stride
        h, w = logits.shape[-2:]
        hr, wr = min(h, -(-H // s) + 1), min(w, -(-W // s) + 1)  # the image's cells + 1 of context
        src = logits[None, :, :hr, :wr]
        up = torch.ops.aten.upsample_bilinear2d.default(src, [H, W], False, float(s), float(s))[0]
        if tuple(output_size) != (H, W):
            height, width = output_size
            if self.logits_resize_mode == "bilinear":
                up = F.interpolate(up[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            else:
                rows = _resize_index(height, H, self.logits_resize_mode).to(up.device)
                cols = _resize_index(width, W, self.logits_resize_mode).to(up.device)
                up = up.index_select(1, rows).index_select(2, cols)
        return up

    def _semantic_sums(self, logits, image_size, output_size, rows, cols, seg_grid, segment_class, segments):
        """Sum over the output pixels of each of ``segments`` (grid segment indices) of the
        upsampled logit (:meth:`_upsampled_logits`) of the segment's class, float64, computed on
        the grid.

        The upsampled logits are linear and separable in the grid logits: ``U_c = A_r^T L_c
        A_c`` with ``A_r [hr, height]``, ``A_c [wr, width]`` the 1-d weights
        (:func:`_linear_resize_weights`). Output pixel ``(y, x)`` lies in segment ``s`` iff grid
        cell ``(rows[y], cols[x])`` does, so the sum of ``U_c`` over the segment is the sum over
        its grid cells of ``P_r L_c P_c^T`` where ``P_r[r, q] = sum_{y: rows[y] = r} A_r[q, y]``
        (``P_c`` likewise): banded ``[hc, hr]`` / ``[wc, wr]`` matrices. Exact up to rounding:
        the full-resolution sum adds float32-rounded upsampled values, this one none.
        """
        H, W = image_size
        height, width = output_size
        s = self.common_stride
        h, w = logits.shape[-2:]
        hc, wc = seg_grid.shape
        hr, wr = min(h, -(-H // s) + 1), min(w, -(-W // s) + 1)
        num = int(seg_grid.max()) + 1
        channel = np.full(num, -1, dtype=np.int64)  # class of each requested segment, else -1
        channel[segments] = np.asarray(segment_class)[segments]
        # [K, hr, wr], gathered below (no copy for float32/float64 CPU logits; half / bfloat16
        # logits become float32, which NumPy can read)
        exact = logits.dtype in (torch.float32, torch.float64)
        g = logits[:, :hr, :wr].detach().to("cpu", logits.dtype if exact else torch.float32).numpy()
        key = (height, H, hr, hc, width, W, wr, wc)
        cached = self._band_cache.get(key)
        if cached is None:  # the bands depend on the sizes only (an image size repeats)
            bands = []
            for n_out, n_in, n_grid, n_r, index in ((height, H, hc, hr, rows), (width, W, wc, wr, cols)):
                p = torch.zeros((n_grid, n_r), dtype=torch.float64).index_add_(
                    0, index, _linear_resize_weights(n_out, n_in, s, n_r, self.logits_resize_mode).T
                ).numpy()
                # grid row i reads rows i + d of the logits for the band's few offsets d:
                # their (clipped) indices [n_grid, D] and weights (0 outside the logits)
                diag = np.unique(np.subtract(*np.nonzero(p)[::-1]))
                idx = np.arange(n_grid)[:, None] + diag[None, :]
                inside = (idx >= 0) & (idx < n_r)
                idx = np.clip(idx, 0, n_r - 1)
                bands.append((idx, np.where(inside, np.take_along_axis(p, idx, 1), 0.0)))
            if len(self._band_cache) >= 16:
                self._band_cache.clear()
            cached = self._band_cache[key] = tuple(bands)
        (idx_r, w_r), (idx_c, w_c) = cached
        # Only the cells of the requested segments, each in its segment's class channel:
        # (P_r L_c P_c^T)[r, q] = sum_{a, b} P_r[r, a] P_c[q, b] L_c[a, b] over the few non-zero
        # diagonals a - r, b - q of the banded P_r, P_c (gathers, no [C, hc, wc] product).
        flat = seg_grid.reshape(-1)
        ch = channel[flat]
        sel = np.flatnonzero(ch >= 0)
        r, q, c = sel // wc, sel % wc, ch[sel]
        g = np.ascontiguousarray(g).reshape(-1)  # (a copy only if the image leaves grid rows or columns out)
        values = np.zeros(len(sel), dtype=np.float64)
        for i in range(idx_r.shape[1]):
            row_base = c * (hr * wr) + idx_r[r, i] * wr
            acc = np.zeros(len(sel), dtype=np.float64)
            for j in range(idx_c.shape[1]):
                acc += np.take(g, row_base + idx_c[q, j]) * w_c[q, j]
            values += acc * w_r[r, i]
        return np.bincount(flat[sel], weights=values, minlength=num)[segments]

    def _image_outputs(
        self, result, hc, wc, image_size, output_size, logits, cut_maps, device
    ):
        """Outputs of one image from its AMWC solution (see the class docstring), computed on the
        grid but for the gathers that write full-resolution outputs: the nearest-neighbour resize
        maps grid row ``r`` to a contiguous band of output rows, so areas, boxes and mask regions
        follow from the per-row / per-column sample counts. ``logits`` (the image's ``[K, h, w]``)
        are upsampled only for ``sem_seg_head``."""
        height, width = output_size
        node_labels = np.asarray(result.node_labels, dtype=np.int64)
        instance_ids = np.asarray(result.instance_ids, dtype=np.int64)
        num_clusters = int(instance_ids.max()) + 1 if instance_ids.size else 0

        # Class of every cluster; stuff clusters of one class merge into one segment.
        cluster_class = np.zeros(num_clusters, dtype=np.int64)
        cluster_class[instance_ids] = node_labels
        cluster_thing = self.partitionable[cluster_class]
        cluster_segment = np.empty(num_clusters, dtype=np.int64)
        segment_class: List[int] = []
        segment_of_key: Dict[int, int] = {}  # thing cluster k: key k; stuff class c: key -1 - c
        for k, c in enumerate(cluster_class.tolist()):  # clusters are numbered in order of their first node
            key = k if cluster_thing[k] else -1 - c
            if key not in segment_of_key:
                segment_of_key[key] = len(segment_class)
                segment_class.append(c)
            cluster_segment[k] = segment_of_key[key]
        num_segments = len(segment_class)
        seg_grid = cluster_segment[instance_ids].reshape(hc, wc)

        # Nearest-neighbour resize: the grid row (column) read by each output row (column), and
        # how many output rows (columns) read each grid row (column).
        rows = _nearest_index(height, image_size[0], self.common_stride, hc, self.resize_mode)
        cols = _nearest_index(width, image_size[1], self.common_stride, wc, self.resize_mode)
        rows_np, cols_np = rows.numpy(), cols.numpy()
        row_count = np.bincount(rows_np, minlength=hc)
        col_count = np.bincount(cols_np, minlength=wc)

        # Area filter, then ids 1.. in segment order. Output pixels of a segment = sum over its
        # grid cells of rows x columns read; input pixels = stride**2 x grid cells.
        cell_area = np.outer(row_count, col_count).reshape(-1)
        areas = np.bincount(seg_grid.reshape(-1), weights=cell_area, minlength=num_segments)
        areas = np.rint(areas).astype(np.int64)  # exact: integer sums far below 2**53
        grid_areas = np.bincount(seg_grid.reshape(-1), minlength=num_segments)
        classes = np.asarray(segment_class, dtype=np.int64)
        is_thing = self.partitionable[classes] if num_segments else np.zeros(0, dtype=bool)
        limits = np.where(is_thing, self.instance_area, self.stuff_area)
        filter_areas = grid_areas * self.common_stride**2 if self.area_units == "input" else areas
        keep = (areas > 0) & (filter_areas >= limits)
        if self.min_thing_cluster_size > 1 and num_segments:
            keep &= ~(is_thing & (grid_areas < self.min_thing_cluster_size))
        new_ids = np.zeros(num_segments, dtype=np.int64)
        new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
        rows_d, cols_d = rows.to(device), cols.to(device)
        pan_grid = new_ids[seg_grid].astype(np.int32)
        if device.type == "cpu":
            panoptic = torch.from_numpy(_nearest_resize(pan_grid, row_count, col_count))
        else:
            panoptic = torch.from_numpy(pan_grid).to(device).index_select(0, rows_d).index_select(1, cols_d)
        segments_info = [
            {"id": int(new_ids[k]), "category_id": int(classes[k]), "isthing": bool(is_thing[k]), "area": int(areas[k])}
            for k in np.flatnonzero(keep).tolist()
        ]
        # sem_seg (class docstring): the one-hot AMWC node labels, resized like the segments.
        if device.type == "cpu":
            # Zeroed NumPy memory (calloc, as in _instances), then one np.equal per class that
            # occurs, inside the class's box (the rest of the planes is never written; several
            # times faster on the CPU than zeros + scatter_); viewed as uint8 without a copy.
            small = np.uint8 if self.num_classes <= 256 else np.int64
            node_grid = node_labels.reshape(hc, wc)
            node_out = _nearest_resize(node_grid.astype(small), row_count, col_count)
            one_hot = np.zeros((self.num_classes, height, width), dtype=bool)
            occurring = np.flatnonzero(np.bincount(node_labels, weights=cell_area, minlength=self.num_classes))
            class_boxes = self._segment_boxes(node_grid, occurring, rows_np, cols_np, row_count, col_count)
            for c, (x0, y0, x1, y1) in zip(occurring.tolist(), class_boxes.tolist()):
                np.equal(node_out[y0:y1, x0:x1], c, out=one_hot[c, y0:y1, x0:x1])
            sem_seg = torch.from_numpy(one_hot.view(np.uint8))
        else:
            node_grid = torch.from_numpy(node_labels.reshape(hc, wc)).to(device)
            node_out = node_grid.index_select(0, rows_d).index_select(1, cols_d)
            sem_seg = torch.zeros((self.num_classes, height, width), dtype=torch.uint8, device=device)
            sem_seg.scatter_(0, node_out[None], 1)
        out = {"panoptic_seg": (panoptic, segments_info), "sem_seg": sem_seg}
        if self.predict_sem_seg_head:
            out["sem_seg_head"] = self._upsampled_logits(logits, image_size, output_size)
        if self.predict_instances:
            out["instances"] = self._instances(
                panoptic, segments_info, new_ids, seg_grid, segment_class, cut_maps,
                logits, image_size, (height, width), rows, cols, row_count, col_count,
            )
        return out

    @staticmethod
    def _segment_boxes(seg_grid, segments, rows, cols, row_count, col_count):
        """Tight output-pixel boxes ``[len(segments), 4] int64 (x0, y0, x1, y1)`` (exclusive ends,
        as ``BitMasks.get_bounding_boxes``) of the given (non-empty in the output) segments of the
        grid map, from the grid cells that some output pixel reads."""
        used_r, used_c = np.flatnonzero(row_count), np.flatnonzero(col_count)
        sampled = seg_grid[np.ix_(used_r, used_c)]
        num = int(seg_grid.max()) + 1
        bounds = []  # y0, y1, then x0, x1
        for axis, used, index in ((0, used_r, rows), (1, used_c, cols)):
            # present[s, i]: segment s occurs in the i-th used grid row (column)
            present = np.zeros((num, len(used)), dtype=bool)
            present[sampled, np.expand_dims(np.arange(len(used)), 1 - axis)] = True
            first = present[segments].argmax(1)
            last = len(used) - 1 - present[segments][:, ::-1].argmax(1)
            # output rows (columns) reading grid row r: [searchsorted(index, r, left), ..(right))
            bounds += [np.searchsorted(index, used[first], side="left"),
                       np.searchsorted(index, used[last], side="right")]
        y0, y1, x0, x1 = bounds
        return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)

    def _instances(self, panoptic, segments_info, new_ids, seg_grid, segment_class,
                   cut_maps, logits, image_size, size, rows, cols, row_count, col_count):
        """``Instances`` of the thing segments, with the ``MaskScore`` of the class docstring; boxes
        from the grid (:meth:`_segment_boxes`), masks written inside their boxes only, scores on
        the grid (:meth:`_semantic_sums`; ``logits``: the image's ``[K, h, w]``)."""
        device = panoptic.device
        things = [s for s in segments_info if s["isthing"]]
        M = len(things)
        classes = torch.tensor([s["category_id"] for s in things], dtype=torch.int64, device=device)
        num = len(new_ids)
        segment_of_id = np.zeros(int(new_ids.max()) + 1 if num else 1, dtype=np.int64)
        segment_of_id[new_ids[new_ids > 0]] = np.flatnonzero(new_ids > 0)
        thing_segments = segment_of_id[[s["id"] for s in things]] if things else np.zeros(0, np.int64)
        boxes, score = np.zeros((0, 4), dtype=np.int64), np.zeros(M, dtype=np.float64)
        if M:
            boxes = self._segment_boxes(seg_grid, thing_segments, rows.numpy(), cols.numpy(), row_count, col_count)
            # the mean logit of the segment's class over its output pixels, plus the edge term
            sums = self._semantic_sums(logits, image_size, size, rows, cols, seg_grid, segment_class, thing_segments)
            edge = self._edge_scores(seg_grid, num, thing_segments, things, panoptic, cut_maps, logits.shape[-2:])
            score = sums / np.asarray([s["area"] for s in things], dtype=np.float64) + edge

        shape = (M,) + tuple(size)  # [M, H, W] masks
        if device.type == "cpu":
            # zeroed memory from NumPy (calloc: at this size fresh pages that the kernel zeroes on
            # first touch, so the pixels outside the boxes cost nothing here)
            masks_np, pan_np = np.zeros(shape, dtype=bool), panoptic.numpy()
            for m, s in enumerate(things):
                x0, y0, x1, y1 = boxes[m].tolist()
                np.equal(pan_np[y0:y1, x0:x1], s["id"], out=masks_np[m, y0:y1, x0:x1])
            masks = torch.from_numpy(masks_np)
        else:
            masks = torch.zeros(shape, dtype=torch.bool, device=device)
            for m, s in enumerate(things):
                x0, y0, x1, y1 = boxes[m].tolist()
                masks[m, y0:y1, x0:x1] = panoptic[y0:y1, x0:x1] == s["id"]

        instances = Instances(size)
        instances.pred_masks = masks
        instances.pred_classes = classes
        instances.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32, device=device))
        instances.scores = torch.as_tensor(score, dtype=torch.float32, device=device)
        return instances

    def _edge_scores(self, seg_grid, num_segments, thing_segments, things, panoptic, cut_maps, grid_size):
        """``[M] float64`` edge term of the instance score of each thing (class docstring), from
        ``_C.grid_edge_sums`` over the image's float32 cut-logit maps: those of the solved grid
        ``seg_grid`` (``"edges"``) or of the whole padded grid ``grid_size`` (``"positions"``)."""
        distances, intervals = self.edge_distances, self.edge_sampling_intervals
        if self.instance_score_edge_mean == "edges":  # over all distances together
            in_sum, in_cnt, out_sum, out_cnt = (
                x.sum(0) for x in _C.grid_edge_sums(seg_grid, cut_maps, distances, intervals, num_segments)
            )

            def mean(total, count):  # 0 for no edge
                return np.where(count > 0, total / np.maximum(count, 1), 0.0)

            return (mean(out_sum, out_cnt) - mean(in_sum, in_cnt))[thing_segments]
        # "positions": the output ids at the grid cells' centres (the authors' mask[2::4, 2::4],
        # zero-padded to the grid), each distance's sums divided by its map's number of positions
        h, w = grid_size
        s = self.common_stride
        sampled = panoptic[s // 2 :: s, s // 2 :: s][:h, :w].cpu().numpy()
        ids = np.zeros((h, w), dtype=np.int64)
        ids[: sampled.shape[0], : sampled.shape[1]] = sampled
        thing_ids = np.asarray([t["id"] for t in things], dtype=np.int64)
        in_sum, _, out_sum, _ = _C.grid_edge_sums(
            ids, cut_maps, distances, intervals, int(max(ids.max(), thing_ids.max())) + 1
        )
        positions = np.asarray([m.size for m in cut_maps], dtype=np.float64).reshape(-1, 1)
        return ((out_sum - in_sum) / positions).sum(0)[thing_ids]
