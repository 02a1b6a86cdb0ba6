"""The differentiable asymmetric multiway cut (AMWC) layer of COPS.

Source: Abbas & Swoboda, "Combinatorial Optimization for Panoptic Segmentation: A Fully
Differentiable Approach", NeurIPS 2021: Sec. 3.1 (AMWC on the pixel grid), Sec. 3.4 (gradient
estimation by averaging over perturbation magnitudes, slides "Contribution 1") and Sec. 3.5
(backward pass through a transformation to multiway cut, slides "Contribution 3"); the black-box
differentiation estimator of Vlastelica et al., "Differentiation of Blackbox Combinatorial
Solvers", ICLR 2020. The reference implementation is the authors'
``panoptic_affinity/multicut_solvers.py`` (``AsymmetricMultiCutSolver``, ``solve_mc_grad_avg``)
and ``losses.py`` (``AMWCBackward``).

The forward solves the AMWC of every image on the grid graph of
:class:`~detectron2_cops.solvers.GridGraph` and returns its panoptic segments as masks; the
backward estimates the gradient through a multiway cut over those segments (see
:class:`AMWCFunction`).

Input checks: :class:`AMWCLayer` checks its arguments once (constructor, :meth:`AMWCLayer.forward`)
and :meth:`AMWCFunction.backward` the incoming gradients; the solves behind them take the
solver's unchecked path (the native extension keeps its own validation pass).

Pure PyTorch + NumPy on top of :mod:`detectron2_cops.solvers`; imports no Detectron2.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import as_float, as_int, as_int_list, as_int_set
from ..solvers import GridGraph
from ..solvers.grid import cached_grid_graph
from ..solvers.amwc import _solve_batch
from ._checks import NonFiniteError, all_finite, check_tensor, check_tensor_list

__all__ = ["AMWCOutput", "AMWCBatchOutput", "AMWCFunction", "AMWCLayer", "NonFiniteError", "PadFn"]

#: ``pad_fn(image_index, masks [M_b, H, W], classes [M_b] int64) -> class ids of the padded masks``
PadFn = Callable[[int, Tensor, Tensor], Sequence[int]]


class AMWCOutput(NamedTuple):
    """AMWC solution of one image, on the grid of the costs (stride-4 grid pixels in COPS).

    Attributes:
        node_labels: ``[H, W] int64`` class of every grid pixel.
        instance_ids: ``[H, W] int64`` contiguous segment id ``0..S-1`` of every pixel (connected
            components of joined edges, as returned by the solver; a stuff class that occurs in
            several disconnected components has several instance ids but one mask).
        edge_labels: one ``[2, H_d, W_d] uint8`` map per edge distance, 1 = cut; 0 at map
            positions that are not edges of the graph (see :class:`GridGraph`).
        masks: ``[M, H, W]`` (dtype of the semantic costs) binary panoptic masks, one per
            predicted segment, differentiable (gradients go through the MWC backward). Order:
            stuff classes present (ascending class id), then thing segments (ascending instance
            id), then the ``num_padded`` empty masks asked for by ``pad_fn``. Every pixel lies
            in at most one mask (exactly one unless thing clusters under
            ``min_thing_cluster_size`` pixels were left without a mask).
        mask_classes: ``[M] int64`` class of every mask.
        objective: AMWC objective of the solution (float).
        num_padded: number of padded (empty) masks at the end of ``masks``.
    """

    node_labels: Tensor
    instance_ids: Tensor
    edge_labels: List[Tensor]
    masks: Tensor
    mask_classes: Tensor
    objective: float
    num_padded: int = 0


class AMWCBatchOutput(NamedTuple):
    """The raw, batched outputs of :class:`AMWCFunction` (see :meth:`AMWCLayer.forward_batched`).

    Attributes:
        masks: ``[M_total, H, W]`` float (costs' dtype), the masks of all images concatenated
            (image ``b``'s masks are those with ``mask_image_index == b``), differentiable.
        mask_image_index: ``[M_total] int64`` image of every mask (non-differentiable).
        mask_classes: ``[M_total] int64`` class of every mask (non-differentiable).
        node_one_hot: ``[B, K, H, W]`` float one-hot of the node labels, differentiable (for a
            loss on semantic labels, the "naive" pipeline of the COPS slides).
        node_labels: ``[B, H, W] int64`` (non-differentiable).
        instance_ids: ``[B, H, W] int64`` (non-differentiable).
        objectives: ``[B] float64`` AMWC objectives (non-differentiable).
        mask_is_padding: ``[M_total] bool``, True for the padded (empty) masks that ``pad_fn``
            asked for (the last masks of their image; non-differentiable).
        edge_label_maps: per edge distance ``[B, 2, H_d, W_d]`` float edge labels (1 = cut, 0 at
            invalid positions), differentiable (for a loss on edge labels).
    """

    masks: Tensor
    mask_image_index: Tensor
    mask_classes: Tensor
    node_one_hot: Tensor
    node_labels: Tensor
    instance_ids: Tensor
    objectives: Tensor
    mask_is_padding: Tensor
    edge_label_maps: List[Tensor]


# ----------------------------------------------------------------------------- configuration
@dataclass
class _Spec:
    """Everything :class:`AMWCFunction` needs besides the cost tensors (one object per call)."""

    grid: GridGraph
    thing_mask: np.ndarray
    num_samples: int
    lambda_min: float
    lambda_max: float
    local_search: bool
    num_threads: int
    generator: Optional[torch.Generator]
    pixel_weights: Optional[Tensor]
    edge_weights: Optional[List[Tensor]]
    timing: Dict[str, float]
    min_thing_cluster_size: int = 1
    pad_fn: Optional["PadFn"] = None
    warm_start: bool = False
    float32: bool = False


def _new_timing() -> Dict[str, float]:
    return {"forward_solver_s": 0.0, "forward_other_s": 0.0,
            "backward_solver_s": 0.0, "backward_other_s": 0.0}


def _node_costs_f64(semantic_costs: Tensor) -> np.ndarray:
    """``[B, K, H, W]`` -> C-contiguous ``[B, H*W, K] float64`` on the CPU, in one copy."""
    B, K, H, W = semantic_costs.shape
    out = torch.empty((B, H, W, K), dtype=torch.float64)
    out.copy_(semantic_costs.detach().permute(0, 2, 3, 1))
    return out.reshape(B, H * W, K).numpy()


def _segments(labels: np.ndarray, inst: np.ndarray, thing_mask: np.ndarray, K: int,
              min_thing_cluster_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Panoptic segments of one AMWC solution, O(N).

    One segment per stuff class present (key = class), one per thing cluster (key = K + cluster
    id) of at least ``min_thing_cluster_size`` pixels (smaller thing clusters get no segment, as
    ``IGNORE_INSTANCE_SIZE_AMC`` in the COPS code's ``solve_amc``, ``multicut_solvers.py``); keys
    are compacted in ascending order (stuff classes, then clusters).

    Returns:
        ``(seg_of_pixel [N] int64 (-1: no segment), seg_classes [S] int64)``.
    """
    N = labels.shape[0]
    key = np.where(thing_mask[labels], K + inst, labels)
    num_keys = K + (int(inst.max()) + 1 if N else 0)
    sizes = np.bincount(key, minlength=num_keys)
    present = sizes > 0
    present[K:] &= sizes[K:] >= min_thing_cluster_size
    remap = np.cumsum(present) - 1
    remap[~present] = -1
    key_class = np.empty(num_keys, dtype=np.int64)
    key_class[:K] = np.arange(K)
    key_class[K + inst] = labels  # a cluster id has a single class
    return remap[key], key_class[present]


def _scatter_masks(masks: Tensor, seg_of_pixel: np.ndarray) -> Tensor:
    """``masks[seg_of_pixel[n], n] = 1`` in the ``[S, N]`` CPU ``masks`` where ``seg_of_pixel[n] >= 0``."""
    on = np.flatnonzero(seg_of_pixel >= 0)
    masks[torch.from_numpy(seg_of_pixel[on]), torch.from_numpy(on)] = 1
    return masks


def _check_pad_classes(value, b: int, K: int) -> np.ndarray:
    """What ``pad_fn`` returned for image ``b``, checked: class ids in ``[0, K)``."""
    classes = as_int_list(value, f"the class ids pad_fn returned for image {b}", 0)
    if any(c >= K for c in classes):
        raise ValueError(f"pad_fn returned class ids {classes} for image {b}, not all in [0, {K}) (num_classes)")
    return np.asarray(classes, dtype=np.int64)


def _mwc_label_classes(seg_classes: np.ndarray, K: int) -> np.ndarray:
    """Class of every MWC label of the backward (COPS Sec. 3.5; ``add_semantic_costs_to_instance_costs``
    in the authors' ``losses.py``): one label per segment (predicted, then padded), then one per
    class that has no segment at all (neither predicted nor padded), in ascending order."""
    free = np.ones(K, dtype=bool)
    free[seg_classes] = False
    return np.concatenate([seg_classes, np.flatnonzero(free)]).astype(np.int64)


def _mwc_initial_labels(seg_of_pixel: np.ndarray, labels: np.ndarray, label_class: np.ndarray) -> np.ndarray:
    """The forward solution as a labelling of the backward's MWC (its warm start), ``[N] int32``:
    a pixel takes its segment's label (the first labels, see :func:`_mwc_label_classes`), a pixel
    without one (a thing cluster under ``min_thing_cluster_size``) the first label of its class."""
    L = len(label_class)
    first = np.empty(int(label_class.max()) + 1 if L else 0, dtype=np.int64)
    first[label_class[::-1]] = np.arange(L - 1, -1, -1)
    return np.where(seg_of_pixel >= 0, seg_of_pixel, first[labels]).astype(np.int32)


def _accumulate_node_gradient(acc: np.ndarray, row_start: np.ndarray, fwd: np.ndarray,
                              sample_classes: Sequence[np.ndarray], inv: np.ndarray, total: float) -> None:
    """Node part of the estimator's sum over the perturbed solutions (COPS Sec. 3.4/3.5, before
    the division by ``N``): into ``acc`` ``[N * K]`` float64 (zero on entry), ``S`` scatters
    ``acc[row_start + sample_classes[i]] += inv[i]`` (``row_start[n] = n * K``, ``inv[i] = 1 /
    lambda_i``), then ``acc[row_start + fwd] -= total`` (``total = inv.sum()``), to the bit. The
    nodes whose class is the forward's in every sample (after a warm start, most) all hold
    ``(inv[0] + ... + inv[S-1]) - total``, written with one scatter."""
    same = np.ones(len(fwd), dtype=bool)
    for c in sample_classes:
        same &= c == fwd
    unchanged = 0.0
    for v in inv.tolist():
        unchanged += v
    unchanged -= float(total)
    acc[row_start + fwd] = unchanged
    changed = np.flatnonzero(~same)
    if changed.size:
        rows = row_start[changed]
        own = rows + fwd[changed]
        acc[own] = 0.0
        for c, w in zip(sample_classes, inv):
            acc[rows + c[changed]] += w  # one class per node and sample: no repeated index
        acc[own] -= total


#: the most samples whose edge labels :func:`_accumulate_edge_gradient` encodes in one uint16
_EDGE_TABLE_MAX_SAMPLES = 15


def _accumulate_edge_gradient(acc: np.ndarray, fwd: np.ndarray, sample_labels: Sequence[np.ndarray],
                              inv: np.ndarray, total: float) -> None:
    """Edge part of that sum: ``acc[e] = sum_i sample_labels[i][e] * inv[i] - fwd[e] * total``
    (``[E]`` float64, zero on entry; labels uint8 0/1), to the bit as ``acc += y_i * inv[i]`` per
    sample, then ``acc -= fwd * total``. An edge's value depends only on its ``S + 1`` labels: for
    ``S <= 15`` they are packed into one code per edge and the ``2^(S+1)`` sums looked up."""
    S = len(sample_labels)
    if S > _EDGE_TABLE_MAX_SAMPLES:
        tmp = np.empty(len(acc), dtype=np.float64)
        for y, w in zip(sample_labels, inv):
            acc += np.multiply(y, w, out=tmp)
        acc -= fwd * total
        return
    dt = np.uint8 if S < 8 else np.uint16
    code = fwd.astype(dt) << dt(S)
    for i, y in enumerate(sample_labels):
        code |= y.astype(dt, copy=False) << dt(i)
    bits = (np.arange(2 ** (S + 1))[:, None] >> np.arange(S + 1)) & 1  # [patterns, S + 1]
    table = np.zeros(len(bits), dtype=np.float64)
    for i in range(S):
        table += bits[:, i] * inv[i]
    table -= bits[:, S] * total
    np.take(table, code, out=acc)


# ----------------------------------------------------------------------------- autograd function
class _Workspace(threading.local):
    """Per-thread scratch memory for the backward's per-image MWC costs (base and direction,
    ``[N, L]`` each), reused by the next backward on this thread: fresh arrays of that size are
    page-faulted on first write, which costs more than filling them. A request that does not fit
    gets a fresh array, and the buffer grows to the last pass's total at the next :meth:`reset`.
    Views are 64-byte aligned; they must not outlive the pass."""

    _ALIGN = 64

    def __init__(self):
        self.buf = np.empty(0, dtype=np.uint8)
        self.used = 0

    def reset(self):
        if self.used > self.buf.size:
            self.buf = np.empty(self.used, dtype=np.uint8)
        self.used = 0

    def empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        start = -(-self.used // self._ALIGN) * self._ALIGN
        self.used = start + nbytes
        if self.used > self.buf.size:
            return np.empty(shape, dtype=dtype)
        return self.buf[start:self.used].view(dtype).reshape(shape)


_workspace = _Workspace()


class AMWCFunction(torch.autograd.Function):
    """AMWC solve (forward) with the COPS multiway-cut gradient estimator (backward).

    Low-level; use :class:`AMWCLayer`, which validates the inputs and builds ``spec``.
    ``AMWCFunction.apply(spec, semantic_costs, *edge_costs)`` with ``semantic_costs``
    ``[B, K, H, W]`` float and one edge-cost map ``[B, 2, H_d, W_d]`` float per edge distance
    returns the tuple ``(masks, mask_image_index, mask_classes, node_one_hot, node_labels,
    instance_ids, objectives, mask_is_padding, *edge_label_maps)`` described in
    :class:`AMWCBatchOutput`.

    Backward (COPS Sec. 3.4 / 3.5, slides "Contribution 1" and "Contribution 3"; the authors'
    ``AMWCBackward.backward_multiway_cut_averaging`` and ``solve_mc_grad_avg``). For image ``b``
    with segments ``m = 0..M-1`` of classes ``k(m)`` (the predicted segments and the padded ones,
    see below) a multiway cut is built with one label per segment and one label per class ``k``
    without any segment::

        node cost of label m:  c_V(i, k(m)) + lambda * (dL/dP_m(i) + dL/dX(i, k(m)))
        node cost of label k:  c_V(i, k)    + lambda * dL/dX(i, k)
        edge cost:             c_E(ij)      + lambda * dL/dY(ij)

    It is solved for ``lambda_i ~ U(lambda_min, lambda_max)``, ``i = 1..N`` (all ``B * N``
    instances in one parallel :func:`~detectron2_cops.solvers.solve_amwc_batch` call), and the
    estimates of Vlastelica et al. (2020, eq. (6)) are averaged (COPS eq. for ``dL_avg/dc``)::

        dL/dc = (1/N) sum_i ( s(c + lambda_i dL/ds) - s(c) ) / lambda_i

    where ``s`` is the node one-hot over the ``K`` classes (an MWC label is mapped to its class)
    together with the edge labels (MWC: ``y(ij) = [label(i) != label(j)]``) and ``s(c)`` is the
    forward AMWC solution. The node-cost gradient is multiplied by ``spec.pixel_weights``
    ``[B, H, W]`` and the edge-cost gradient by ``spec.edge_weights`` (as the COPS code does);
    invalid edge-map positions get gradient 0.

    Two cases differ from the plain construction above, both exact for the black-box estimator:

    * an image whose incoming gradients are all zero gets a zero gradient without solving
      (``s(c + 0) = s(c)``; the MWC of such an image would otherwise be degenerate: the labels
      of one class's segments would have identical costs);
    * an image with zero mask gradient but a non-zero node or edge gradient (a loss on node or
      edge labels only, the "naive pipeline" of the COPS slides) is perturbed in the AMWC itself
      (slide "Naive pipeline: gradient estimation through AMWC"): ``c_V + lambda dL/dX``,
      ``c_E + lambda dL/dY`` with the thing classes partitionable, since without a mask gradient
      the segment labels of the MWC carry no information.

    Warm start (``spec.warm_start``, :class:`AMWCLayer` ``backward_warm_start``; off by default,
    not in the COPS code, which solves every perturbed problem from scratch): each perturbed
    solve starts from the forward solution ``s(c)`` mapped to the MWC labels (every pixel at its
    segment's label, see :func:`_mwc_initial_labels`; the naive-pipeline AMWC at the forward's
    classes and instance ids) and is improved by the solver's local search instead of GAEC from
    singletons; its result is never worse than that start on the perturbed objective. Where the
    perturbation is too small to move any pixel, the estimate is then exactly zero, whereas a
    cold GAEC solve of the (different) MWC problem may differ from ``s(c)`` for reasons unrelated
    to the loss. The solver forms the ``N`` perturbed costs of an image on its worker threads from
    one base and one direction (``solve_amwc_batch``'s ``node_cost_perturbations``; with the mask
    gradient alone, the COPS loss, also the ``[N, L]`` MWC costs from the ``[N, K]`` ones), in
    float32 with ``spec.float32``; the gradient is accumulated in float64 either way.

    The lambdas are drawn in ``backward`` from ``spec.generator`` (CPU ``torch.Generator``, or the
    global RNG if None), ``B * N`` values in image-major order, whether an image is solved or not,
    so that a seeded run is reproducible. Missing (None) incoming gradients count as zero.
    Gradients are returned on the device and in the dtype of each cost tensor.

    Missed ground truth (COPS code: ``ComputeBestGroundTruth``, ``utils.py``;
    ``add_semantic_costs_to_instance_costs``, ``losses.py``). A ground-truth segment
    that no predicted segment is matched to (e.g. an instance merged into its neighbour) would
    have no MWC label: pixels the loss pushes out of the merged segment could then only change
    class. ``spec.pad_fn(b, masks_b, classes_b) -> classes`` (called in ``forward`` with image
    ``b``'s detached masks) asks for one empty *padded* mask per such segment; the loss pairs it
    with its ground truth, and its gradient ``dL/dP_pad`` (negative on the ground truth's pixels)
    makes it a label of that class in the MWC, to which those pixels move without changing
    class: the estimate then cuts the merged boundary (edge-cost gradient) instead of pushing
    the pixels to another class. Thing clusters smaller than ``spec.min_thing_cluster_size``
    pixels get no mask (the COPS code's ``IGNORE_INSTANCE_SIZE_AMC``); their pixels keep their
    class in ``s(c)``.
    """

    @staticmethod
    def forward(ctx, spec: _Spec, semantic_costs: Tensor, *edge_costs: Tensor):
        t_start = time.perf_counter()
        ctx.set_materialize_grads(False)
        grid: GridGraph = spec.grid
        B, K, H, W = semantic_costs.shape
        N = H * W
        device, dtype = semantic_costs.device, semantic_costs.dtype

        node_costs = _node_costs_f64(semantic_costs)  # [B, N, K]
        edge_cost_values = grid._to_values([m.detach().to("cpu", torch.float64).numpy() for m in edge_costs], (B,))
        thing_mask = spec.thing_mask

        t0 = time.perf_counter()
        results = _solve_batch([(node_costs[b], grid.edges, edge_cost_values[b], thing_mask) for b in range(B)],
                               spec.local_search, spec.num_threads)
        t_solver = time.perf_counter() - t0

        labels = np.stack([r.node_labels for r in results]).astype(np.int64)  # [B, N]
        inst = np.stack([r.instance_ids for r in results]).astype(np.int64)  # [B, N]
        edge_labels = np.stack([r.edge_labels for r in results])  # [B, E] uint8 (E = 0 included)
        objectives = np.array([r.objective for r in results], dtype=np.float64)

        # Segments (one per stuff class present, one per thing cluster of at least
        # spec.min_thing_cluster_size pixels), then the padded segments that spec.pad_fn asks for.
        seg_of_pixels, seg_classes, pad_classes = [], [], []
        for b in range(B):
            seg_of_pixel, classes_b = _segments(labels[b], inst[b], thing_mask, K, spec.min_thing_cluster_size)
            pad_b = np.zeros(0, dtype=np.int64)
            if spec.pad_fn is not None:
                masks_b = _scatter_masks(torch.zeros(len(classes_b), N, dtype=dtype), seg_of_pixel).reshape(-1, H, W)
                pad_b = _check_pad_classes(spec.pad_fn(b, masks_b, torch.from_numpy(classes_b)), b, K)
            seg_of_pixels.append(seg_of_pixel)
            seg_classes.append(np.concatenate([classes_b, pad_b]))
            pad_classes.append(pad_b)
        seg_counts = [len(c) for c in seg_classes]
        offsets = np.concatenate([[0], np.cumsum(seg_counts)]).astype(np.int64)
        M_total = int(offsets[-1])
        # One allocation for the masks of the batch; padded masks stay empty.
        masks = torch.zeros(M_total, N, dtype=dtype)
        mask_is_padding = torch.zeros(M_total, dtype=torch.bool)
        for b in range(B):
            start, end = int(offsets[b]), int(offsets[b + 1])
            _scatter_masks(masks[start:end], seg_of_pixels[b])  # a view: writes into masks
            mask_is_padding[end - len(pad_classes[b]):end] = True
        masks = masks.reshape(M_total, H, W)
        mask_image_index = torch.repeat_interleave(torch.arange(B), torch.tensor(seg_counts, dtype=torch.long))
        mask_classes = torch.from_numpy(np.concatenate(seg_classes).astype(np.int64))

        labels_t = torch.from_numpy(labels)
        one_hot = torch.zeros(B, K, N, dtype=dtype).scatter_(1, labels_t[:, None, :], 1).reshape(B, K, H, W)
        edge_maps = [torch.from_numpy(m) for m in grid._to_maps(edge_labels)]

        ctx.spec = spec
        ctx.shape = (B, K, H, W)
        ctx.node_costs = node_costs  # [B, N, K] float64
        ctx.edge_cost_values = edge_cost_values  # [B, E] float64
        ctx.labels = labels
        ctx.instance_ids = inst  # [B, N] int64, the warm start of the naive-pipeline AMWC
        ctx.edge_labels = edge_labels
        ctx.seg_classes = seg_classes  # per image: class of each segment (predicted, then padded)
        ctx.seg_of_pixel = seg_of_pixels  # per image [N]: segment of each pixel, -1 = no mask
        ctx.offsets = offsets
        ctx.cost_meta = [(c.device, c.dtype) for c in (semantic_costs, *edge_costs)]

        outs = tuple(t.to(device) for t in (
            masks, mask_image_index, mask_classes, one_hot, labels_t.reshape(B, H, W),
            torch.from_numpy(inst).reshape(B, H, W), torch.from_numpy(objectives), mask_is_padding,
        )) + tuple(m.to(device=device, dtype=dtype) for m in edge_maps)
        ctx.mark_non_differentiable(outs[1], outs[2], outs[4], outs[5], outs[6], outs[7])
        spec.timing["forward_solver_s"] = t_solver
        spec.timing["forward_other_s"] = time.perf_counter() - t_start - t_solver
        return outs

    @staticmethod
    def backward(ctx, grad_masks, _g_index, _g_classes, grad_one_hot, _g_labels, _g_inst, _g_obj,
                 _g_pad, *grad_edge_maps):
        t_start = time.perf_counter()
        spec: _Spec = ctx.spec
        grid: GridGraph = spec.grid
        B, K, H, W = ctx.shape
        N, E = H * W, grid.num_edges
        S = spec.num_samples
        offsets = ctx.offsets

        # Lambdas first (always B * S draws) so the RNG stream does not depend on the data.
        u = torch.rand(B, S, dtype=torch.float64, generator=spec.generator)
        lambdas = (spec.lambda_min + (spec.lambda_max - spec.lambda_min) * u).numpy()

        def cpu_grad(g: Tensor, name: str) -> Tensor:
            g = g.detach().to("cpu")
            if g.dtype not in (torch.float32, torch.float64):  # float16 / bfloat16: NumPy-readable
                g = g.float()
            if not all_finite(g):
                raise NonFiniteError(f"AMWCFunction.backward: the incoming gradient of {name} contains NaN or inf")
            return g

        # Incoming gradients stay in their dtype (no float64 copy of the [M, H, W] mask gradient).
        dP = None if grad_masks is None else cpu_grad(grad_masks, "the masks").reshape(-1, N).numpy()
        dX = None if grad_one_hot is None else cpu_grad(grad_one_hot, "the node one-hot").reshape(B, K, N).numpy()
        dY = None  # [B, E] float64
        if any(g is not None for g in grad_edge_maps):
            dY = grid._to_values([np.zeros((B,) + shape) if g is None else
                                  cpu_grad(g, f"the edge labels (distance index {d})").to(torch.float64).numpy()
                                  for d, (g, shape) in enumerate(zip(grad_edge_maps, grid.map_shapes))], (B,))

        fdt = np.float32 if spec.float32 else np.float64
        ws = _workspace  # the perturbed costs below live until the solver returns
        ws.reset()
        # the native entries (base, edges, edge costs, partitionable, warm labels, warm clusters,
        # delta, lambda[, label classes]); plan: (image, MWC label -> class) per solved image
        instances, plan = [], []
        for b in range(B):
            M_b = int(offsets[b + 1] - offsets[b])
            dP_b = None if dP is None or M_b == 0 else dP[offsets[b]:offsets[b + 1]]  # [M_b, N]
            dX_b = None if dX is None else dX[b].T  # [N, K] (a transposed view)
            dY_b = None if dY is None else dY[b]
            has_p = dP_b is not None and bool(np.any(dP_b))
            has_x = dX_b is not None and bool(np.any(dX_b))
            has_y = dY_b is not None and bool(np.any(dY_b))
            if not (has_p or has_x or has_y):
                continue
            c_E = ctx.edge_cost_values[b]
            relabel = ()  # (MWC labels -> classes,) when the solver forms the MWC costs itself
            if has_p:
                # MWC transformation (COPS Sec. 3.5): labels = segments + classes without segment.
                label_class = _mwc_label_classes(ctx.seg_classes[b], K)
                if has_x:
                    # [N, L], C order (np.take along axis 1; a fancy column index gives a strided copy)
                    base = np.take(ctx.node_costs[b].astype(fdt, copy=False), label_class, axis=1,
                                   out=ws.empty((N, len(label_class)), fdt))
                    delta = ws.empty(base.shape, fdt)  # every entry written once below
                    delta[...] = dX_b[:, label_class]
                    delta[:, :M_b] += dP_b.T
                else:
                    # The mask gradient alone (the COPS loss): the solver forms the [N, L] costs
                    # base[:, label_class] + lam * [dP_b.T | 0] on its worker thread from the
                    # [N, K] costs and the label-major [M_b, N] gradient (solve_amwc_batch's
                    # (delta, scale, label_classes) perturbation; the same values to the bit).
                    base = ctx.node_costs[b].astype(fdt, copy=False)
                    delta = dP_b.astype(fdt, copy=False)
                    relabel = (label_class,)
                part = None
                warm = ((_mwc_initial_labels(ctx.seg_of_pixel[b], ctx.labels[b], label_class), None)
                        if spec.warm_start else (None, None))
            else:
                # Loss on node/edge labels only: perturb the AMWC itself (slides, naive pipeline).
                label_class = np.arange(K)
                base = ctx.node_costs[b].astype(fdt, copy=False)
                delta = ws.empty(base.shape, fdt)
                delta[...] = dX_b if has_x else 0
                part = spec.thing_mask
                warm = ((ctx.labels[b].astype(np.int32), ctx.instance_ids[b].astype(np.int32))
                        if spec.warm_start else (None, None))
            for i in range(S):
                lam = float(lambdas[b, i])
                # node costs base + lam * delta, formed by the solver on its worker thread (in fdt,
                # as np.multiply(delta, fdt(lam)) + base): no [N, L] array per sample here
                if has_y:
                    edge = np.multiply(dY_b, lam)
                    edge += c_E
                    edge = edge.astype(fdt, copy=False)
                else:
                    edge = c_E
                instances.append((base, grid.edges, edge, part) + warm + (delta, lam) + relabel)
            plan.append((b, label_class))

        t0 = time.perf_counter()
        try:
            results = _solve_batch(instances, spec.local_search, spec.num_threads) if instances else []
        except ValueError as err:  # e.g. c + lambda * gradient beyond the float32 range
            raise ValueError(
                "AMWCFunction.backward: the perturbed costs c + lambda * (incoming gradient) "
                f"(lambda <= {spec.lambda_max:g}, {'float32' if spec.float32 else 'float64'}: "
                f"backward_float32={spec.float32}) are not valid solver input: {err}"
            ) from None
        t_solver = time.perf_counter() - t0

        grad_node = np.zeros((B, N, K), dtype=np.float64)
        grad_edge = np.zeros((B, E), dtype=np.float64)
        row_start = np.arange(N) * K  # flat index of (node, class 0) in a [N, K] array
        for j, (b, label_class) in enumerate(plan):
            inv = 1.0 / lambdas[b]
            total = inv.sum()
            rs = results[j * S:(j + 1) * S]
            _accumulate_node_gradient(grad_node[b].reshape(-1), row_start, ctx.labels[b],
                                      [label_class[r.node_labels] for r in rs], inv, total)
            if E:
                _accumulate_edge_gradient(grad_edge[b], ctx.edge_labels[b], [r.edge_labels for r in rs], inv,
                                          total)
        if plan:
            grad_node /= S
            grad_edge /= S

        g_sem = torch.from_numpy(grad_node).reshape(B, H, W, K).permute(0, 3, 1, 2)
        if spec.pixel_weights is not None:
            g_sem = g_sem * spec.pixel_weights.to("cpu", torch.float64)[:, None]
        g_edges = [torch.from_numpy(m) for m in grid._to_maps(grad_edge)]
        if spec.edge_weights is not None:
            g_edges = [g * w.to("cpu", torch.float64) for g, w in zip(g_edges, spec.edge_weights)]
        out = [g.to(device=dev, dtype=dt) for g, (dev, dt) in zip([g_sem] + g_edges, ctx.cost_meta)]
        spec.timing["backward_solver_s"] = t_solver
        spec.timing["backward_other_s"] = time.perf_counter() - t_start - t_solver
        return (None, *out)


# ----------------------------------------------------------------------------- input checks
def _check_maps(maps, name: str, grid: GridGraph, B: int, device, *, non_negative=False):
    """``maps``: a list with one tensor ``[B, 2, H_d, W_d]`` per edge distance of ``grid``."""
    check_tensor_list(maps, name, f"[B, 2, H_d, W_d], one map per edge distance {grid.edge_distances}",
                      len(grid.map_shapes))
    for d, (m, shape) in enumerate(zip(maps, grid.map_shapes)):
        check_tensor(m, f"{name}[{d}] (edge distance {grid.edge_distances[d]})", f"[B, 2, H_d, W_d] = {[B, *shape]}",
                     shape=(B,) + shape, device=device, non_negative=non_negative)


# ----------------------------------------------------------------------------- module
class AMWCLayer(nn.Module):
    """Differentiable AMWC layer: costs -> panoptic segments (COPS Sec. 3.1, 3.4, 3.5).

    Args:
        num_classes: ``K >= 1``, number of semantic classes (things and stuff).
        thing_classes: class ids in ``[0, K)`` that are things (partitionable in the AMWC).
        edge_distances: edge distances ``d`` in grid pixels (e.g. ``[1, 4, 16, 32, 64]``).
        edge_sampling_intervals: one sampling interval per distance (default all 1); see
            :class:`~detectron2_cops.solvers.GridGraph` for the edge-map convention.
        num_samples: ``N >= 1``, number of perturbation magnitudes averaged in backward (COPS: 5).
        lambda_min, lambda_max: ``1e-300 <= lambda_min <= lambda_max``, the range of
            ``lambda ~ U(lambda_min, lambda_max)`` (COPS: 1 and 5000).
        local_search: run the solver's local search after GAEC (forward and backward; implied by
            ``backward_warm_start``).
        num_threads: solver threads, ``0`` = one per instance up to the core count.
        min_thing_cluster_size: ``>= 1``; thing clusters with fewer grid pixels get no mask
            (the COPS code: ``IGNORE_INSTANCE_SIZE_AMC // 4 = 12 // 4 = 3``; 1 keeps all).
        backward_warm_start: start every perturbed solve of the backward from the forward
            solution instead of GAEC from singletons (a departure from COPS, see
            :class:`AMWCFunction`), improved by the solver's local search. Implies local search
            in the forward solve as well: the forward solution must be a local-search fixpoint,
            or an unperturbed backward solve would move away from it and bias the gradient.
        backward_float32: form the backward's perturbed costs in float32 instead of float64
            (half the memory traffic; the solver sums in float64, gradients accumulate in
            float64).

    Attributes:
        last_timing: ``{"forward_solver_s", "forward_other_s", "backward_solver_s",
            "backward_other_s"}`` wall-clock seconds of the latest call (backward entries 0.0
            until its backward has run). "solver" is the time inside the batched solver call.

    Memory: the backward holds two MWC node-cost arrays ``[H*W, L]`` per image (the base and the
    perturbation direction; ``L`` = predicted segments + padded segments + classes without a
    segment), float32 by default (``backward_float32``), in a per-thread workspace that the next
    backward reuses, plus one perturbed ``[H*W, L]`` array per solver thread: about 0.17 GB for
    two 256 x 512 grids with ~55 labels each (twice that in float64).

    Example::

        layer = AMWCLayer(19, range(11, 19), [1, 4, 16, 32, 64])
        padding = pq_surrogate.padding(gt_masks, gt_classes, weights)  # pads missed ground truth
        outs = layer(semantic_costs, edge_costs, pixel_weights=torch.stack(weights), pad_fn=padding)
        loss = pq_surrogate([o.masks for o in outs], [o.mask_classes for o in outs],
                            gt_masks, gt_classes, weights, padding=padding).loss
        loss.backward()  # gradients w.r.t. semantic_costs and edge_costs

    Raises:
        ValueError: on bad constructor arguments (see the ranges above; integers are what
            ``operator.index`` accepts, never a bool or ``4.0``; thing class ids out of range;
            distances or intervals not integers ``>= 1``, interval count != distance count;
            ``local_search``, ``backward_warm_start`` or ``backward_float32`` not a bool).
    """

    def __init__(
        self,
        num_classes: int,
        thing_classes: Sequence[int],
        edge_distances: Sequence[int],
        edge_sampling_intervals: Optional[Sequence[int]] = None,
        *,
        num_samples: int = 5,
        lambda_min: float = 1.0,
        lambda_max: float = 5000.0,
        local_search: bool = False,
        num_threads: int = 0,
        min_thing_cluster_size: int = 1,
        backward_warm_start: bool = False,
        backward_float32: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = as_int(num_classes, "num_classes", 1)
        self.thing_classes = tuple(sorted(as_int_set(thing_classes, "thing_classes", 0)))
        if self.thing_classes and self.thing_classes[-1] >= self.num_classes:
            raise ValueError(f"thing_classes {list(self.thing_classes)} must lie in [0, {self.num_classes}) (num_classes)")
        self._thing_mask = np.isin(np.arange(self.num_classes), self.thing_classes)
        # GridGraph checks the distances and intervals.
        probe = GridGraph(0, 0, edge_distances, edge_sampling_intervals)
        self.edge_distances = tuple(probe.edge_distances)
        self.edge_sampling_intervals = tuple(probe.edge_sampling_intervals)
        self.num_samples = as_int(num_samples, "num_samples", 1)
        # the estimate divides by lambda (Vlastelica et al. eq. (6)): 1 / lambda must be finite
        self.lambda_min = as_float(lambda_min, "lambda_min", 1e-300)
        self.lambda_max = as_float(lambda_max, "lambda_max", self.lambda_min)
        self.num_threads = as_int(num_threads, "num_threads", 0, 2**31 - 1)
        self.min_thing_cluster_size = as_int(min_thing_cluster_size, "min_thing_cluster_size", 1)
        flags = {"local_search": local_search, "backward_warm_start": backward_warm_start,
                 "backward_float32": backward_float32}
        for name, v in flags.items():
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {v!r}")
        self.local_search, self.backward_warm_start, self.backward_float32 = map(bool, flags.values())
        self.last_timing: Dict[str, float] = _new_timing()

    def extra_repr(self) -> str:
        lists = ", ".join(f"{n}={list(getattr(self, n))}"
                          for n in ("thing_classes", "edge_distances", "edge_sampling_intervals"))
        rest = ", ".join(f"{n}={getattr(self, n)}" for n in (
            "local_search", "num_threads", "min_thing_cluster_size", "backward_warm_start", "backward_float32"))
        return (f"num_classes={self.num_classes}, {lists}, num_samples={self.num_samples}, "
                f"lambda=[{self.lambda_min}, {self.lambda_max}], {rest}")

    def grid(self, height: int, width: int) -> GridGraph:
        """The (cached, :func:`~detectron2_cops.solvers.grid.cached_grid_graph`) :class:`GridGraph`
        of a ``height x width`` grid."""
        return cached_grid_graph(int(height), int(width), self.edge_distances, self.edge_sampling_intervals)

    def _validate(self, semantic_costs, edge_costs, pixel_weights, edge_weights, generator, pad_fn) -> GridGraph:
        """Check the arguments of :meth:`forward` (see there); returns the grid of the costs."""
        sc = semantic_costs
        check_tensor(sc, "semantic_costs", "[B, K, H, W]", ndim=4)
        B, K, H, W = sc.shape
        if K != self.num_classes or min(B, H, W) == 0:
            raise ValueError(f"semantic_costs must have shape [B, K, H, W] with K = num_classes = {self.num_classes} "
                             f"and B, H, W >= 1, got {list(sc.shape)}")
        grid = self.grid(H, W)
        _check_maps(edge_costs, "edge_costs", grid, B, sc.device)
        if pixel_weights is not None:
            check_tensor(pixel_weights, "pixel_weights", f"[B, H, W] = {[B, H, W]}", shape=(B, H, W), device=sc.device,
                         non_negative=True)
        if edge_weights is not None:
            _check_maps(edge_weights, "edge_weights", grid, B, sc.device, non_negative=True)
        if generator is not None and not (isinstance(generator, torch.Generator) and generator.device.type == "cpu"):
            raise ValueError(f"generator must be None or a CPU torch.Generator, got {generator!r}")
        if pad_fn is not None and not callable(pad_fn):
            raise ValueError(f"pad_fn must be None or callable, got {type(pad_fn).__name__}")
        return grid

    def forward_batched(
        self,
        semantic_costs: Tensor,
        edge_costs: Sequence[Tensor],
        pixel_weights: Optional[Tensor] = None,
        edge_weights: Optional[Sequence[Tensor]] = None,
        generator: Optional[torch.Generator] = None,
        pad_fn: Optional[PadFn] = None,
    ) -> AMWCBatchOutput:
        """Like :meth:`forward` but returns the batched :class:`AMWCBatchOutput` (all outputs of
        :class:`AMWCFunction`, including the differentiable node one-hot and edge-label maps)."""
        t0 = time.perf_counter()
        grid = self._validate(semantic_costs, edge_costs, pixel_weights, edge_weights, generator, pad_fn)
        timing = _new_timing()
        self.last_timing = timing
        spec = _Spec(
            grid=grid, thing_mask=self._thing_mask, num_samples=self.num_samples,
            lambda_min=self.lambda_min, lambda_max=self.lambda_max,
            local_search=self.local_search or self.backward_warm_start,
            num_threads=self.num_threads, generator=generator,
            pixel_weights=None if pixel_weights is None else pixel_weights.detach(),
            edge_weights=None if edge_weights is None else [w.detach() for w in edge_weights],
            timing=timing, min_thing_cluster_size=self.min_thing_cluster_size, pad_fn=pad_fn,
            warm_start=self.backward_warm_start, float32=self.backward_float32,
        )
        outs = AMWCFunction.apply(spec, semantic_costs, *edge_costs)
        result = AMWCBatchOutput(*outs[:8], edge_label_maps=list(outs[8:]))
        timing["forward_other_s"] = time.perf_counter() - t0 - timing["forward_solver_s"]
        return result

    def forward(
        self,
        semantic_costs: Tensor,
        edge_costs: Sequence[Tensor],
        pixel_weights: Optional[Tensor] = None,
        edge_weights: Optional[Sequence[Tensor]] = None,
        generator: Optional[torch.Generator] = None,
        pad_fn: Optional[PadFn] = None,
    ) -> List[AMWCOutput]:
        """Solve the AMWC of every image; differentiable w.r.t. all costs.

        Args:
            semantic_costs: ``[B, K, H, W]`` float node costs ``c_V`` (lower = preferred class),
                on the stride-4 grid; any device (solved on the CPU, results moved back).
            edge_costs: one ``[B, 2, H_d, W_d]`` float map per edge distance (shapes of
                ``GridGraph(H, W, ...).map_shapes``; channel 0 along y, 1 along x); positive =
                favours joining, negative = favours cutting. Entries at positions that are not
                edges are ignored (but must be finite).
            pixel_weights: optional ``[B, H, W]`` float >= 0; multiplies the node-cost gradient
                (0 on ignored pixels).
            edge_weights: optional list of ``[B, 2, H_d, W_d]`` float >= 0; multiplies the
                edge-cost gradients.
            generator: optional CPU ``torch.Generator`` for the backward's lambdas (default: the
                global RNG).
            pad_fn: optional ``pad_fn(b, masks_b, classes_b) -> class ids`` called once per image
                after the solve with image ``b``'s masks (``[M_b, H, W]``, detached) and classes
                (``[M_b] int64``); it returns the classes of the empty masks to append to that
                image (the unmatched ground-truth segments, see :class:`AMWCFunction`;
                ``PanopticQualitySurrogate.padding`` makes such a ``pad_fn``).

        Returns:
            one :class:`AMWCOutput` per image (tensors on the costs' device).

        Raises:
            ValueError: ``semantic_costs`` not a 4-D floating tensor, ``K != num_classes``,
                ``B``, ``H`` or ``W`` zero; ``edge_costs`` not a list with one map per distance,
                maps of the wrong shape, dtype or device; weights of the wrong
                shape/dtype/device or negative; ``generator`` not a CPU generator; ``pad_fn``
                not callable or returning anything but class ids in ``[0, K)``.
            NonFiniteError: (a ``ValueError`` and a ``FloatingPointError``) NaN/inf in costs or
                weights; in the backward, in the incoming gradients.
        """
        out = self.forward_batched(semantic_costs, edge_costs, pixel_weights, edge_weights, generator, pad_fn)
        t0 = time.perf_counter()
        B = semantic_costs.shape[0]
        counts = torch.bincount(out.mask_image_index.cpu(), minlength=B).tolist()
        mask_chunks = torch.split(out.masks, counts, 0)
        class_chunks = torch.split(out.mask_classes, counts, 0)
        edge_u8 = [m.detach().to(torch.uint8) for m in out.edge_label_maps]
        objectives = out.objectives.cpu().tolist()
        pads = torch.bincount(out.mask_image_index[out.mask_is_padding].cpu(), minlength=B).tolist()
        result = [
            AMWCOutput(
                node_labels=out.node_labels[b],
                instance_ids=out.instance_ids[b],
                edge_labels=[m[b] for m in edge_u8],
                masks=mask_chunks[b],
                mask_classes=class_chunks[b],
                objective=objectives[b],
                num_padded=pads[b],
            )
            for b in range(B)
        ]
        self.last_timing["forward_other_s"] += time.perf_counter() - t0
        return result
