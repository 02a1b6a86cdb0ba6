"""Python API of the native AMWC / MWC solvers (``detectron2_cops._C``).

The asymmetric multiway cut (AMWC; Kroeger et al. 2014, COPS Sec. 3.1)

    min_{x, y}  sum_i c_V(i, x(i)) + sum_{ij} c_E(ij) y(ij)
    s.t.        y(ij) = 1  if x(i) != x(j)
                y(ij) = 0  if x(i) == x(j) and x(i) is not partitionable
                y is a valid clustering

is solved by greedy additive edge contraction (GAEC) extended to AMWC, followed by an optional
local search (node and cluster moves) that never makes the objective worse. A positive edge cost
favours joining its two nodes, a negative one favours cutting. Multiway cut (MWC) is the special
case without partitionable classes.

Input checks: the functions here pass their arrays unchanged to the native extension, which
checks everything once (shapes and dtypes in its bindings, values in the solver, see
``csrc/bindings.cpp``) and raises ``ValueError`` naming the argument (prefixed by ``instance
<b>: `` in the batch functions); only what the extension cannot see (``num_threads``, the packing
of a batch) is checked here.

The native solvers keep the graph structure (duplicate edges merged, adjacency, summation plan)
of the last two distinct edge sets they solved on, with a copy of those edges: a later solve whose
node count and ``edges`` equal one of them entry by entry (one pass over the edges) reuses it
instead of validating and building it again, the largest part of a solve's setup. This costs
about 40 bytes per input edge while cached; :func:`clear_graph_structure_cache` frees it.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .. import _C
from ..checks import as_int

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


#: Costs must be finite with ``|c| < COST_BOUND = 2**960`` (any float32 is): every sum the solvers
#: form (a cluster's summed class costs, merged edge costs, the objective, gains as differences of
#: such sums) has fewer than 2**34 terms, so it stays below 2**994 and cannot overflow to +-inf,
#: which would give a wrong labelling without an error. The native solver checks it.
COST_BOUND = 2.0**960


def clear_graph_structure_cache() -> None:
    """Drop the graph structures the native solvers keep for the last two distinct edge sets
    (see the module docstring); the next solve on those edges builds its structure again. Their
    memory is freed once no running solve uses them. Results never depend on the cache."""
    _C.clear_graph_structure_cache()


def _result(raw) -> AMWCResult:
    node_labels, instance_ids, edge_labels, objective, info = raw
    return AMWCResult(node_labels, instance_ids, edge_labels, float(objective), dict(info))


def _solve_batch(instances: Sequence[Tuple], local_search: bool, num_threads: int) -> List[AMWCResult]:
    """:func:`solve_amwc_batch` without the Python-side checks, for callers that build the native
    entries themselves (the AMWC layer): ``instances`` holds ``(node_costs, edges, edge_costs,
    partitionable[, initial_labels[, initial_clusters[, node_delta, scale[, label_classes]]]])``
    (``partitionable`` None: MWC); ``num_threads`` an int >= 0. The native extension still checks
    every entry (the one validation pass) and raises ``ValueError`` naming the instance."""
    return [_result(r) for r in _C.solve_amwc_batch(instances, local_search, num_threads)]


def solve_amwc(
    node_costs: np.ndarray,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    partitionable: Optional[np.ndarray],
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
        partitionable: ``[K]`` bool (or integers 0 / 1), True for classes whose clusters may be
            split into several instances (thing classes); None: none is (a multiway cut).
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
        ValueError: wrong ranks or lengths; costs not float32/float64, not finite or with
            ``|c| >= COST_BOUND`` (``2**960``, so that no sum overflows); ``K = 0`` with
            ``N > 0``; non-integer edges, node ids out of range, self-loops; ``partitionable``
            not bool (or 0 / 1); ``initial_labels`` / ``initial_clusters`` not integer arrays of
            shape ``[N]``, outside the int32 range, labels outside ``[0, K)``, clusters without
            labels.
    """
    return _result(_C.solve_amwc(node_costs, edges, edge_costs, partitionable, bool(local_search),
                                 initial_labels, initial_clusters))


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
    return _result(_C.solve_amwc(node_costs, edges, edge_costs, None, bool(local_search), initial_labels, None))


def solve_amwc_batch(
    instances: Sequence[Tuple],
    *,
    local_search: bool = True,
    num_threads: int = 0,
    node_cost_perturbations: Optional[Sequence[Optional[Tuple]]] = None,
) -> List[AMWCResult]:
    """Solve a list of AMWC instances on a pool of native threads (the GIL is released).

    Args:
        instances: sequence of ``(node_costs, edges, edge_costs, partitionable)`` tuples, each as
            in :func:`solve_amwc` (``partitionable=None`` means MWC), optionally extended by
            ``initial_labels`` and ``initial_clusters`` (warm start, as in :func:`solve_amwc`;
            None = no warm start).
        local_search: as in :func:`solve_amwc`.
        num_threads: worker threads, an integer in ``[0, 2**31 - 1]``; ``0`` = one per instance,
            at most the number of CPU cores.
        node_cost_perturbations: optional, one entry per instance: None, ``(delta, scale)`` or
            ``(delta, scale, label_classes)``, ``delta`` of the instance's node-cost dtype
            (float32 or float64), ``scale`` a finite real number.

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
        ValueError: as :func:`solve_amwc`, with the message prefixed by ``instance <b>: ``; an
            instance that is not a tuple of 4 to 6 entries; ``num_threads`` not an integer in
            ``[0, 2**31 - 1]``; ``node_cost_perturbations`` not one entry per instance, an entry
            of another form, a ``delta`` of another shape or dtype than described, a scale that
            is not a finite real number, ``label_classes`` not a non-empty vector of integer
            class ids in ``[0, K)`` or given with a ``partitionable``; perturbed costs that are
            not finite or reach ``COST_BOUND``.
    """
    num_threads = as_int(num_threads, "num_threads", 0, 2**31 - 1)
    perturbations = node_cost_perturbations
    if perturbations is not None and len(perturbations) != len(instances):
        raise ValueError(f"node_cost_perturbations must hold one entry per instance ({len(instances)}), "
                         f"got {len(perturbations)}")
    entries = []
    for b, inst in enumerate(instances):
        inst = tuple(inst)
        pert = None if perturbations is None else perturbations[b]
        if not 4 <= len(inst) <= 6:
            raise ValueError(f"instance {b}: expected (node_costs, edges, edge_costs, partitionable"
                             f"[, initial_labels[, initial_clusters]]), got a sequence of length {len(inst)}")
        if pert is None:
            entries.append(inst)
            continue
        if not isinstance(pert, (tuple, list)) or len(pert) not in (2, 3) or (len(pert) == 3 and inst[3] is not None):
            raise ValueError(f"instance {b}: a node-cost perturbation must be (delta, scale), or (delta, scale, "
                             f"label_classes) with partitionable None (a multiway cut), got {pert!r}")
        entries.append(inst + (None,) * (6 - len(inst)) + tuple(pert))
    return _solve_batch(entries, bool(local_search), num_threads)


def solve_mwc_batch(
    instances: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    local_search: bool = True,
    num_threads: int = 0,
) -> List[AMWCResult]:
    """Batch version of :func:`solve_mwc`: ``instances`` holds ``(node_costs, edges, edge_costs)``,
    optionally extended by ``initial_labels`` (warm start, as in :func:`solve_amwc`). Errors as
    :func:`solve_amwc_batch`."""
    for b, inst in enumerate(instances):
        if len(inst) not in (3, 4):
            raise ValueError(f"instance {b}: expected (node_costs, edges, edge_costs[, initial_labels]), "
                             f"got a sequence of length {len(inst)}")
    return solve_amwc_batch([(i[0], i[1], i[2], None) + tuple(i[3:]) for i in instances],
                            local_search=local_search, num_threads=num_threads)


def amwc_objective(
    node_costs: np.ndarray,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    node_labels: np.ndarray,
    instance_ids: np.ndarray,
) -> float:
    """AMWC objective ``sum_i c_V(i, x(i)) + sum_ij c_E(ij) [instance_ids differ]`` (native, float64).

    ``node_labels`` ``[N]`` integer classes in ``[0, K)``, ``instance_ids`` ``[N]`` integer ids in
    the int32 range. Does not check feasibility. Raises ValueError on malformed costs or edges (as
    :func:`solve_amwc`), labels or ids that are not integer arrays of shape ``[N]`` or out of those
    ranges.
    """
    return float(_C.labelling_objective(node_costs, edges, edge_costs, None, node_labels, instance_ids))
