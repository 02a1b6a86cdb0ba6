"""Python API of the native AMWC / MWC solvers (``detectron2_cops._C``).

The asymmetric multiway cut (AMWC; Kroeger et al. 2014, COPS Sec. 3.1, ``DESIGN.md`` section 1)

    min_{x, y}  sum_i c_V(i, x(i)) + sum_{ij} c_E(ij) y(ij)
    s.t.        y(ij) = 1  if x(i) != x(j)
                y(ij) = 0  if x(i) == x(j) and x(i) is not partitionable
                y is a valid clustering

is solved by greedy additive edge contraction (GAEC) extended to AMWC, followed by an optional
local search (node and cluster moves) that never makes the objective worse. A positive edge cost
favours joining its two nodes, a negative one favours cutting. Multiway cut (MWC) is the special
case without partitionable classes.

The native solvers keep the graph structure (duplicate edges merged, adjacency, summation plan)
of the last two distinct edge sets they solved on, with a copy of those edges: a later solve whose
node count and ``edges`` equal one of them entry by entry (one pass over the edges) reuses it
instead of validating and building it again (together ~18 ms of a 256x512 Cityscapes-size solve,
~3 ms at COCO size; repeated solves measured ~10 % faster). This costs about 40 bytes per input
edge while cached; :func:`clear_graph_structure_cache` frees it.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .. import _C

__all__ = [
    "AMWCResult",
    "solve_amwc",
    "solve_mwc",
    "solve_amwc_batch",
    "solve_mwc_batch",
    "amwc_objective",
    "clear_graph_structure_cache",
]


class AMWCResult(NamedTuple):
    """Solution of one AMWC / MWC instance.

    Attributes:
        node_labels: ``[N] int32`` class of every node.
        instance_ids: ``[N] int32`` contiguous segment ids ``0..S-1`` (connected components of
            joined edges, numbered in order of their first node).
        edge_labels: ``[E] uint8`` one per input edge, 1 = cut (``instance_ids`` differ).
        objective: the AMWC objective of this labelling (float).
        info: solver statistics: ``gaec_objective`` (objective after GAEC and the final merge,
            or of the initial labelling when warm-started, before local search),
            ``gaec_contractions`` (0 when warm-started), ``local_search_moves``,
            ``local_search_rounds`` (alternations of node and cluster moves run) and
            ``incremental_cluster_passes`` (cluster passes that updated the previous pass's
            segments instead of rebuilding them, see ``csrc/local_search.cpp``).
    """

    node_labels: np.ndarray
    instance_ids: np.ndarray
    edge_labels: np.ndarray
    objective: float
    info: dict


_FLOATS = (np.float32, np.float64)

#: Costs must be finite with ``|c| < COST_BOUND = 2**960`` (any float32 is): every sum the solvers
#: form (a cluster's summed class costs, merged edge costs, the objective, gains as differences of
#: such sums) has fewer than 2**34 terms, so it stays below 2**994 and cannot overflow to +-inf,
#: which would give a wrong labelling without an error. The native code checks the same bound.
COST_BOUND = 2.0**960


def _within_cost_bound(a: np.ndarray) -> bool:
    """Whether every entry of the non-empty float array ``a`` is finite with ``|x| < COST_BOUND``:
    one max and one min reduction (NaN propagates through both)."""
    return max(float(a.max()), -float(a.min())) < COST_BOUND


def check_int(value, name: str, minimum: int, maximum: Optional[int] = None) -> int:
    """``value`` as an int after checking that it is an integer (``operator.index``; not a bool)
    in ``[minimum, maximum]``. Raises ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_num_threads(num_threads) -> int:
    """``num_threads`` of the batch solvers: an integer in ``[0, 2**31 - 1]`` (0: one thread per
    instance, at most the CPU count). Raises ValueError."""
    return check_int(num_threads, "num_threads", 0, 2**31 - 1)


def _check_costs(arr, name: str, ndim: int, shape_desc: str, cache=None) -> np.ndarray:
    """Checked cost array (float32 or float64, ``ndim`` dims, finite with ``|c| < COST_BOUND``),
    C-contiguous.

    ``cache`` (a dict, one per batch call): an array object already checked with the same
    ``ndim`` is not checked again (the backward of the AMWC layer passes one base, delta and
    edge-cost array for all perturbed solves of an image)."""
    if cache is not None:
        hit = cache.get((id(arr), ndim))
        if hit is not None and hit[0] is arr:
            return hit[1]
    a = np.asarray(arr)
    if a.dtype.type not in _FLOATS:
        raise ValueError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_desc}, got {list(a.shape)}")
    if a.size and not _within_cost_bound(a):
        ok = np.isfinite(a) if a.dtype == np.float32 else np.abs(a) < COST_BOUND  # float32 < bound
        bad = np.argwhere(~ok)[0].tolist()
        raise ValueError(
            f"{name} must be finite with |value| < 2**960 (so that no sum of costs overflows); "
            f"found {a[tuple(bad)]} at index {bad}"
        )
    # float32 stays float32 (the native code reads it as it is, on its worker thread; no copy here)
    a = np.ascontiguousarray(a)
    if cache is not None:
        cache[(id(arr), ndim)] = (arr, a)  # keeps `arr` alive: its id stays unique
    return a


def _prepare(node_costs, edges, edge_costs, partitionable, where: str = "", edge_cache=None, cost_cache=None):
    """Validate and convert one instance; returns C-contiguous float32-or-float64/int64/uint8 arrays.

    ``edge_cache`` (a dict, one per batch call): an ``edges`` array object already validated for
    the same ``N`` is not checked again (the instances of a batch usually share one grid);
    ``cost_cache``: the same for cost arrays (see :func:`_check_costs`)."""
    try:
        nc = _check_costs(node_costs, "node_costs", 2, "[N, K]", cost_cache)
        N, K = nc.shape
        cached = None if edge_cache is None else edge_cache.get((id(edges), N))
        if cached is not None and cached[0] is edges:
            e = cached[1]
            ec = _check_costs(edge_costs, "edge_costs", 1, f"[E] with E = {e.shape[0]}", cost_cache)
            if ec.shape[0] != e.shape[0]:
                raise ValueError(f"edge_costs must have shape [{e.shape[0]}] (one cost per edge), got {list(ec.shape)}")
            return nc, e, ec, _check_partitionable(partitionable, K)
        e = np.asarray(edges)
        if e.shape == (0,):  # e.g. [] (float64 to NumPy): no edges
            e = np.zeros((0, 2), dtype=np.int64)
        if e.ndim != 2 or e.shape[1] != 2:
            raise ValueError(f"edges must have shape [E, 2], got {list(e.shape)}")
        if e.dtype.kind not in "iu":
            raise ValueError(f"edges must be an integer array, got dtype {e.dtype}")
        E = e.shape[0]
        ec = _check_costs(edge_costs, "edge_costs", 1, f"[E] with E = {E}", cost_cache)
        if ec.shape[0] != E:
            raise ValueError(f"edge_costs must have shape [{E}] (one cost per edge), got {list(ec.shape)}")
        if E:
            if e.min() < 0 or e.max() >= N:
                bad = int(np.argmax((e < 0).any(1) | (e >= N).any(1)))
                raise ValueError(
                    f"edges must hold node ids in [0, {N}); edge {bad} is {e[bad].tolist()}"
                )
            loops = e[:, 0] == e[:, 1]
            if loops.any():
                bad = int(np.argmax(loops))
                raise ValueError(f"edges must not contain self-loops; edge {bad} is {e[bad].tolist()}")
        e = np.ascontiguousarray(e, dtype=np.int64)
        p = _check_partitionable(partitionable, K)
        if N > 0 and K == 0:
            raise ValueError("node_costs must have at least one class (K >= 1)")
    except ValueError as err:
        raise ValueError(where + str(err)) from None
    if edge_cache is not None:
        edge_cache[(id(edges), N)] = (edges, e)  # keeps `edges` alive: its id stays unique
    return nc, e, ec, p


def _check_partitionable(partitionable, K: int) -> np.ndarray:
    if partitionable is None:
        return np.zeros(K, dtype=np.uint8)
    p = np.asarray(partitionable)
    if p.ndim != 1 or p.shape[0] != K:
        raise ValueError(
            f"partitionable must have shape [K] with K = {K} (node_costs.shape[1]), "
            f"got {list(p.shape)}"
        )
    if p.dtype != np.bool_ and not (p.dtype.kind in "iu" and np.isin(p, (0, 1)).all()):
        raise ValueError(f"partitionable must be a bool array, got dtype {p.dtype}")
    return np.ascontiguousarray(p, dtype=np.uint8)


def _check_initial(initial_labels, initial_clusters, N: int, K: int, where: str = ""):
    """Validate a warm start: ``initial_labels`` ``[N]`` integer classes in ``[0, K)``,
    ``initial_clusters`` ``[N]`` integer ids in the int32 range (or None). Returns them as
    C-contiguous int32 arrays (or None)."""
    if initial_labels is None:
        if initial_clusters is not None:
            raise ValueError(where + "initial_clusters given without initial_labels")
        return None, None
    labels = _check_node_ints(initial_labels, "initial_labels", N, 0, K, where)
    if initial_clusters is None:
        return labels, None
    return labels, _check_node_ints(initial_clusters, "initial_clusters", N, -2 ** 31, 2 ** 31, where)


def _check_node_ints(arr, name: str, N: int, lo: int, hi: int, where: str = "") -> np.ndarray:
    """``arr`` as a C-contiguous int32 ``[N]`` array after checking that it is an integer array
    of that shape with values in ``[lo, hi)`` (``hi - lo <= 2**32``). Raises ValueError."""
    a = np.asarray(arr)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{where}{name} must be an integer array, got dtype {a.dtype}")
    if a.shape != (N,):
        raise ValueError(f"{where}{name} must have shape [N] = [{N}], got {list(a.shape)}")
    if N and (a.min() < lo or a.max() >= hi):
        bad = int(np.argmax((a < lo) | (a >= hi)))
        raise ValueError(f"{where}{name} must hold values in [{lo}, {hi}); node {bad} has {a[bad]}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _check_perturbation(pert, nc: np.ndarray, where: str, cost_cache=None):
    """Validate ``(delta, scale)`` or ``(delta, scale, label_classes)`` of :func:`solve_amwc_batch`
    against the prepared node costs ``nc`` ``[N, K]``. Returns ``(delta, scale, label_classes)``
    (``label_classes`` None for the two-element form)."""
    if isinstance(pert, (tuple, list)) and len(pert) == 3:
        delta, scale, label_classes = pert
    else:
        try:
            delta, scale = pert
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}a node-cost perturbation must be (delta, scale) or (delta, scale, label_classes), "
                f"got {pert!r}"
            ) from None
        label_classes = None
    N, K = nc.shape
    lc = None
    if label_classes is not None:
        lc = np.asarray(label_classes)
        if lc.dtype.kind not in "iu":
            raise ValueError(f"{where}label_classes must be an integer array, got dtype {lc.dtype}")
        if lc.ndim != 1 or lc.shape[0] < 1:
            raise ValueError(f"{where}label_classes must have shape [L] with L >= 1, got {list(lc.shape)}")
        if lc.min() < 0 or lc.max() >= K:
            bad = int(np.argmax((lc < 0) | (lc >= K)))
            raise ValueError(f"{where}label_classes must hold class ids in [0, {K}); label {bad} has {lc[bad]}")
        lc = np.ascontiguousarray(lc, dtype=np.int64)
    try:
        d = _check_costs(delta, "node_delta", 2, "[M, N]" if lc is not None else "[N, K]", cost_cache)
    except ValueError as err:
        raise ValueError(where + str(err)) from None
    if lc is None and (d.shape != nc.shape or d.dtype != nc.dtype):
        raise ValueError(
            f"{where}node_delta must have the shape {list(nc.shape)} and dtype {nc.dtype} of node_costs, "
            f"got {list(d.shape)} {d.dtype}"
        )
    if lc is not None and (d.shape[1] != N or d.shape[0] > len(lc) or d.dtype != nc.dtype):
        raise ValueError(
            f"{where}node_delta must have shape [M, N] with N = {N}, M <= len(label_classes) = {len(lc)} and "
            f"the dtype {nc.dtype} of node_costs, got {list(d.shape)} {d.dtype}"
        )
    if not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)):
        raise ValueError(f"{where}the perturbation scale must be a finite real number, got {scale!r}")
    return d, float(scale), lc


def clear_graph_structure_cache() -> None:
    """Drop the graph structures the native solvers keep for the last two distinct edge sets
    (see the module docstring); the next solve on those edges builds its structure again. Their
    memory is freed once no running solve uses them. Results never depend on the cache."""
    _C.clear_graph_structure_cache()


def _wrap(raw) -> AMWCResult:
    node_labels, instance_ids, edge_labels, objective, info = raw
    return AMWCResult(node_labels, instance_ids, edge_labels, float(objective), dict(info))


def solve_amwc(
    node_costs: np.ndarray,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    partitionable: np.ndarray,
    *,
    local_search: bool = True,
    initial_labels: Optional[np.ndarray] = None,
    initial_clusters: Optional[np.ndarray] = None,
) -> AMWCResult:
    """Solve an asymmetric multiway cut with GAEC (+ local search), or warm-started.

    Args:
        node_costs: ``[N, K]`` float32/float64, cost ``c_V(i, k)`` of giving node ``i`` class ``k``.
        edges: ``[E, 2]`` integer node ids; duplicates are summed, ``(i, j)`` equals ``(j, i)``.
        edge_costs: ``[E]`` float32/float64, ``c_E``: paid when the edge is cut (positive favours
            joining, negative favours cutting).
        partitionable: ``[K]`` bool, True for classes whose clusters may be split into several
            instances (thing classes).
        local_search: run the local-search pass after GAEC (default True); its result is never
            worse than plain GAEC's.
        initial_labels: optional warm start, ``[N]`` integer (any int dtype) classes in
            ``[0, K)``: GAEC is skipped and the local search starts from this labelling; the
            result is never worse than it (``info["gaec_objective"]`` is then the objective of
            the start, ``info["gaec_contractions"]`` 0). Not in the COPS code, which always solves
            from scratch; used by the AMWC layer's backward (``backward_warm_start``).
        initial_clusters: optional ``[N]`` integer cluster ids (int32 range) with
            ``initial_labels``: adjacent nodes start joined iff they have the same class and,
            for a partitionable class, the same cluster id (default: the same class suffices;
            adjacent nodes of one non-partitionable class always start joined).

    Returns:
        :class:`AMWCResult`. ``N = 0`` and ``E = 0`` are valid.

    Raises:
        ValueError: wrong ranks or lengths, non-float costs, costs not finite or with
            ``|c| >= COST_BOUND`` (``2**960``, so that no sum overflows), non-integer edges,
            edge ids out of range or negative, self-loops; ``initial_labels`` /
            ``initial_clusters`` not integer arrays of shape ``[N]``, labels outside ``[0, K)``,
            cluster ids outside the int32 range, clusters without labels.
    """
    nc, e, ec, p = _prepare(node_costs, edges, edge_costs, partitionable)
    il, ic = _check_initial(initial_labels, initial_clusters, nc.shape[0], nc.shape[1])
    return _wrap(_C.solve_amwc(nc, e, ec, p, bool(local_search), il, ic))


def solve_mwc(
    node_costs: np.ndarray,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    *,
    local_search: bool = True,
    initial_labels: Optional[np.ndarray] = None,
) -> AMWCResult:
    """Solve a multiway cut: :func:`solve_amwc` with no partitionable class.

    Every label forms one cluster: an edge is cut iff its endpoints have different labels.
    Used by the backward pass of the AMWC layer (COPS Sec. 3.5). Arguments (``initial_labels``:
    optional warm start, as in :func:`solve_amwc`), result and errors as in :func:`solve_amwc`.
    """
    nc, e, ec, p = _prepare(node_costs, edges, edge_costs, None)
    il, _ = _check_initial(initial_labels, None, nc.shape[0], nc.shape[1])
    return _wrap(_C.solve_amwc(nc, e, ec, p, bool(local_search), il, None))


#: ``(node_costs, edges, edge_costs, partitionable[, initial_labels[, initial_clusters]])``
Instance = Tuple


def solve_amwc_batch(
    instances: Sequence[Instance],
    *,
    local_search: bool = True,
    num_threads: int = 0,
    node_cost_perturbations: Optional[Sequence[Optional[Tuple[np.ndarray, float]]]] = None,
) -> List[AMWCResult]:
    """Solve a list of AMWC instances on a pool of native threads (the GIL is released).

    Args:
        instances: sequence of ``(node_costs, edges, edge_costs, partitionable)`` tuples, each as
            in :func:`solve_amwc` (``partitionable=None`` means MWC), optionally extended by
            ``initial_labels`` and ``initial_clusters`` (warm start, as in :func:`solve_amwc`;
            None = no warm start).
        local_search: as in :func:`solve_amwc`.
        num_threads: worker threads; ``0`` = one per instance, at most the number of CPU cores.
        node_cost_perturbations: optional, one entry per instance: None, ``(delta, scale)`` or
            ``(delta, scale, label_classes)``, ``delta`` of the instance's node-cost dtype
            (float32 or float64), ``scale`` a finite float.

            * ``(delta, scale)``, ``delta`` ``[N, K]``: the instance is solved with node costs
              ``node_costs + scale * delta``, computed elementwise in that dtype exactly as
              ``np.multiply(delta, dtype(scale)) + node_costs`` on the solving thread (the AMWC
              layer's backward passes one base and one delta per image for its N perturbed
              solves instead of N ``[N, K]`` arrays; COPS Sec. 3.4).
            * ``(delta, scale, label_classes)``, ``label_classes`` ``[L]`` integer class ids in
              ``[0, K)``, ``delta`` label-major ``[M, N]`` with ``M <= L``: the instance is a
              multiway cut over ``L`` labels (``partitionable`` must be None; ``initial_labels``
              lie in ``[0, L)``; the result's ``node_labels`` are labels) whose node costs are
              ``node_costs[:, label_classes] + scale * D`` with ``D = delta.T`` padded with zero
              columns to ``[N, L]``, the same values to the bit as that expression formed with
              NumPy in the costs' dtype; formed on the solving thread (the COPS MWC of the
              backward, Sec. 3.5: a label per segment, then one per class without a segment,
              perturbed by the mask gradient ``[M, N]``, without ``[N, L]`` arrays in Python).

    Returns:
        list of :class:`AMWCResult`, in input order; identical to solving one by one.

    Raises:
        ValueError: as :func:`solve_amwc`, with the message prefixed by ``instance <b>: ``;
            ``num_threads < 0``; ``node_cost_perturbations`` not one entry per instance, a
            ``delta`` of another shape or dtype than described or not finite, a scale that is
            not a finite real number, ``label_classes`` not a non-empty vector of integer class
            ids in ``[0, K)`` or given with a ``partitionable``; perturbed costs that are not
            finite or reach ``COST_BOUND``.
    """
    num_threads = check_num_threads(num_threads)
    if node_cost_perturbations is not None and len(node_cost_perturbations) != len(instances):
        raise ValueError(
            f"node_cost_perturbations must hold one entry per instance ({len(instances)}), "
            f"got {len(node_cost_perturbations)}"
        )
    prepared = []
    edge_cache: dict = {}
    cost_cache: dict = {}
    for b, inst in enumerate(instances):
        if not 4 <= len(inst) <= 6:
            raise ValueError(
                f"instance {b}: expected (node_costs, edges, edge_costs, partitionable"
                f"[, initial_labels[, initial_clusters]]), got a sequence of length {len(inst)}"
            )
        where = f"instance {b}: "
        pert = None if node_cost_perturbations is None else node_cost_perturbations[b]
        if pert is not None and isinstance(pert, (tuple, list)) and len(pert) == 3 and inst[3] is not None:
            raise ValueError(f"{where}partitionable must be None with label_classes (a multiway cut)")
        nc, e, ec, p = _prepare(*inst[:4], where=where, edge_cache=edge_cache, cost_cache=cost_cache)
        d, scale, lc = (None, None, None) if pert is None else _check_perturbation(pert, nc, where, cost_cache)
        num_labels = nc.shape[1] if lc is None else len(lc)
        if lc is not None:
            p = np.zeros(num_labels, dtype=np.uint8)
        il, ic = _check_initial(inst[4] if len(inst) > 4 else None, inst[5] if len(inst) > 5 else None,
                                nc.shape[0], num_labels, where)
        if pert is None:
            entry = (nc, e, ec, p) if il is None else (nc, e, ec, p, il, ic)
        elif lc is None:
            entry = (nc, e, ec, p, il, ic, d, scale)
        else:
            entry = (nc, e, ec, p, il, ic, d, scale, lc)
        prepared.append(entry)
    return [_wrap(r) for r in _C.solve_amwc_batch(prepared, bool(local_search), num_threads)]


def solve_mwc_batch(
    instances: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    local_search: bool = True,
    num_threads: int = 0,
) -> List[AMWCResult]:
    """Batch version of :func:`solve_mwc`: ``instances`` holds ``(node_costs, edges, edge_costs)``,
    optionally extended by ``initial_labels`` (warm start, as in :func:`solve_amwc`)."""
    for b, inst in enumerate(instances):
        if len(inst) not in (3, 4):
            raise ValueError(
                f"instance {b}: expected (node_costs, edges, edge_costs[, initial_labels]), "
                f"got a sequence of length {len(inst)}"
            )
    return solve_amwc_batch(
        [(inst[0], inst[1], inst[2], None) + tuple(inst[3:]) for inst in instances],
        local_search=local_search, num_threads=num_threads,
    )


def amwc_objective(
    node_costs: np.ndarray,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    node_labels: np.ndarray,
    instance_ids: np.ndarray,
) -> float:
    """AMWC objective ``sum_i c_V(i, x(i)) + sum_ij c_E(ij) [instance_ids differ]`` (native, float64).

    ``node_labels`` ``[N]`` integer classes in ``[0, K)``, ``instance_ids`` ``[N]`` integer ids in
    the int32 range. Does not check feasibility. Raises ValueError on malformed inputs (as
    :func:`solve_amwc`), labels or ids that are not integer arrays of shape ``[N]`` or out of those
    ranges.
    """
    nc, e, ec, p = _prepare(node_costs, edges, edge_costs, None)
    N, K = nc.shape
    labels = _check_node_ints(node_labels, "node_labels", N, 0, K)
    ids = _check_node_ints(instance_ids, "instance_ids", N, -2 ** 31, 2 ** 31)
    return float(_C.labelling_objective(nc, e, ec, p, labels, ids))
