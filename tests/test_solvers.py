"""Tests of the native AMWC / MWC solvers and their Python API (no PyTorch, no Detectron2).

* property tests (hypothesis, >= 500 random graphs): feasibility and objective of every result;
* exact optimum by an ILP (scipy.optimize.milp) on small instances: never below it, and equal on
  planted instances whose optimum is unique and obvious;
* local search never worse than plain GAEC; batch == single; GridGraph round trips; bad input.
"""
import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp

from detectron2_cops.solvers import (
    GridGraph,
    amwc_objective,
    edge_offsets,
    solve_amwc,
    solve_amwc_batch,
    solve_mwc,
    solve_mwc_batch,
)
from detectron2_cops.solvers.synthetic import iid_noise_instance, synthetic_instance


# --------------------------------------------------------------------------- helpers
def numpy_objective(node_costs, edges, edge_costs, node_labels, instance_ids):
    node_costs = np.asarray(node_costs, np.float64)
    obj = node_costs[np.arange(len(node_labels)), node_labels].sum()
    if len(edges):
        cut = instance_ids[edges[:, 0]] != instance_ids[edges[:, 1]]
        obj += np.asarray(edge_costs, np.float64)[cut].sum()
    return float(obj)


def check_feasible(node_costs, edges, partitionable, res):
    """Asserts that `res` is a valid AMWC labelling of the instance."""
    N, K = node_costs.shape
    labels, ids, elab = res.node_labels, res.instance_ids, res.edge_labels
    assert labels.shape == (N,) and labels.dtype == np.int32
    assert ids.shape == (N,) and ids.dtype == np.int32
    assert elab.shape == (len(edges),) and elab.dtype == np.uint8
    if N == 0:
        return
    assert labels.min() >= 0 and labels.max() < K
    # contiguous segment ids 0..S-1
    assert set(np.unique(ids)) == set(range(ids.max() + 1))
    # one class per segment
    for s in range(ids.max() + 1):
        assert len(np.unique(labels[ids == s])) == 1
    if len(edges):
        u, v = edges[:, 0], edges[:, 1]
        # edge labels match the clusters
        np.testing.assert_array_equal(elab, (ids[u] != ids[v]).astype(np.uint8))
        # different classes are always cut
        assert np.all(elab[labels[u] != labels[v]] == 1)
        # no cut between adjacent nodes of one non-partitionable class
        same_stuff = (labels[u] == labels[v]) & ~partitionable[labels[u]]
        assert np.all(elab[same_stuff] == 0)
    # every segment is connected through joined edges (valid clustering)
    parent = np.arange(N)

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, b), c in zip(edges, elab):
        if c == 0:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[ra] = rb
    roots = np.array([find(i) for i in range(N)])
    for s in range(ids.max() + 1):
        assert len(np.unique(roots[ids == s])) == 1, "a segment is not connected"


def exact_amwc(node_costs, edges, edge_costs, partitionable):
    """Optimal AMWC objective by an ILP on the complete graph (transitivity constraints)."""
    node_costs = np.asarray(node_costs, np.float64)
    N, K = node_costs.shape
    pairs = list(itertools.combinations(range(N), 2))
    pidx = {p: i for i, p in enumerate(pairs)}
    nx, nz = N * K, len(pairs)
    c = np.zeros(nx + nz)
    c[:nx] = node_costs.reshape(-1)
    adjacent = set()
    for (a, b), w in zip(edges, edge_costs):
        a, b = int(min(a, b)), int(max(a, b))
        c[nx + pidx[(a, b)]] += w
        adjacent.add((a, b))
    rows, lb, ub = [], [], []

    def row():
        return np.zeros(nx + nz)

    for i in range(N):  # one class per node
        r = row()
        r[i * K : (i + 1) * K] = 1
        rows.append(r), lb.append(1), ub.append(1)
    for (a, b), z in pidx.items():
        for k in range(K):  # different classes are separated: z >= x_ak - x_bk and z >= x_bk - x_ak
            for s, t in ((a, b), (b, a)):
                r = row()
                r[nx + z] = 1
                r[s * K + k] -= 1
                r[t * K + k] += 1
                rows.append(r), lb.append(0), ub.append(np.inf)
            if (a, b) in adjacent and not partitionable[k]:  # same stuff class joined: z <= 2 - x_ak - x_bk
                r = row()
                r[nx + z] = 1
                r[a * K + k] += 1
                r[b * K + k] += 1
                rows.append(r), lb.append(-np.inf), ub.append(2)
    for i, j, k in itertools.permutations(range(N), 3):  # transitivity: z_ij <= z_ik + z_kj
        if i < j:
            r = row()
            r[nx + pidx[(i, j)]] += 1
            r[nx + pidx[tuple(sorted((i, k)))]] -= 1
            r[nx + pidx[tuple(sorted((k, j)))]] -= 1
            rows.append(r), lb.append(-np.inf), ub.append(0)
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lb, ub),
        integrality=np.ones(nx + nz),
        bounds=Bounds(0, 1),
    )
    assert res.success, res.message
    return float(res.fun)


# --------------------------------------------------------------------------- hypothesis
@st.composite
def instances(draw):
    N = draw(st.integers(0, 14))
    K = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    node_costs = rng.normal(0, draw(st.sampled_from([0.5, 2.0])), (N, K)).astype(dtype)
    E = draw(st.integers(0, 3 * N)) if N >= 2 else 0
    edges = np.zeros((E, 2), dtype=draw(st.sampled_from([np.int64, np.int32])))
    if E:
        a = rng.integers(0, N, E)
        b = (a + rng.integers(1, N, E)) % N  # never a self-loop; duplicates and both orientations occur
        edges[:, 0], edges[:, 1] = a, b
    edge_costs = rng.normal(0.3, 2.0, E).astype(dtype)
    partitionable = rng.random(K) < 0.5
    return node_costs, edges, edge_costs, partitionable


@settings(max_examples=600, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_random_instances_feasible_and_objective_exact(inst):
    node_costs, edges, edge_costs, partitionable = inst
    plain = solve_amwc(node_costs, edges, edge_costs, partitionable, local_search=False)
    ls = solve_amwc(node_costs, edges, edge_costs, partitionable, local_search=True)
    for res in (plain, ls):
        check_feasible(node_costs, edges, partitionable, res)
        expected = numpy_objective(node_costs, edges, edge_costs, res.node_labels, res.instance_ids)
        assert res.objective == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert amwc_objective(node_costs, edges, edge_costs, res.node_labels, res.instance_ids) == pytest.approx(
            expected, rel=1e-9, abs=1e-9
        )
    # local search never worse than plain GAEC, and reports GAEC's objective
    assert ls.objective <= plain.objective + 1e-9 * max(1.0, abs(plain.objective))
    assert ls.info["gaec_objective"] == pytest.approx(plain.objective, rel=1e-9, abs=1e-9)
    # MWC: every label is one cluster, i.e. an edge is cut iff the labels differ
    mwc = solve_mwc(node_costs, edges, edge_costs)
    check_feasible(node_costs, edges, np.zeros(node_costs.shape[1], bool), mwc)
    if len(edges):
        np.testing.assert_array_equal(
            mwc.edge_labels, (mwc.node_labels[edges[:, 0]] != mwc.node_labels[edges[:, 1]]).astype(np.uint8)
        )


# --------------------------------------------------------------------------- exact optimum
def _random_small(rng, N, K):
    node_costs = rng.normal(0, 1.0, (N, K))
    pairs = np.array(list(itertools.combinations(range(N), 2)))
    keep = rng.random(len(pairs)) < 0.5
    edges = pairs[keep]
    if len(edges) == 0:
        edges = pairs[:1]
    edge_costs = rng.normal(0.0, 1.5, len(edges))
    partitionable = rng.random(K) < 0.5
    return node_costs, edges, edge_costs, partitionable


def test_never_below_the_exact_optimum():
    rng = np.random.default_rng(0)
    gaps = []
    for t in range(60):
        N = int(rng.integers(3, 10))
        K = int(rng.integers(1, 4))
        node_costs, edges, edge_costs, partitionable = _random_small(rng, N, K)
        opt = exact_amwc(node_costs, edges, edge_costs, partitionable)
        for local_search in (False, True):
            res = solve_amwc(node_costs, edges, edge_costs, partitionable, local_search=local_search)
            check_feasible(node_costs, edges, partitionable, res)
            assert res.objective >= opt - 1e-7, (t, res.objective, opt)
            if local_search:
                gaps.append(res.objective - opt)
    # a heuristic, but on these tiny instances it is optimal most of the time
    assert np.mean(np.array(gaps) < 1e-7) >= 0.6


def _planted(rng, N, K, partitionable, margin=10.0):
    """Costs of a planted AMWC solution with large margins: its labelling is the unique optimum."""
    # planted segments: consecutive runs along a path, random classes; thing segments of one class
    # may touch (they are separated by strongly repulsive edges), stuff segments never touch one of
    # their own class.
    seg = np.sort(rng.integers(0, max(1, N // 2), N))
    seg = np.unique(seg, return_inverse=True)[1]
    S = seg.max() + 1
    cls = np.zeros(S, dtype=np.int64)
    starts = np.ones(S, dtype=bool)  # False: segment s continues segment s - 1
    for s in range(S):
        choices = [k for k in range(K) if not (s > 0 and cls[s - 1] == k and not partitionable[k])]
        if choices:
            cls[s] = rng.choice(choices)
        else:  # a single stuff class: consecutive runs are one segment
            cls[s], starts[s] = cls[s - 1], False
    merged = np.cumsum(starts) - 1
    seg, cls = merged[seg], cls[starts]
    labels = cls[seg]
    node_costs = rng.uniform(0, 1, (N, K)) + margin
    node_costs[np.arange(N), labels] -= 2 * margin
    pairs = np.array(list(itertools.combinations(range(N), 2)))
    path = np.array([[i, i + 1] for i in range(N - 1)])
    extra = pairs[rng.random(len(pairs)) < 0.3]
    edges = np.concatenate([path, extra]) if len(extra) else path
    # two segments of one stuff class must not touch, else the planted labelling is infeasible
    a, b = seg[edges[:, 0]], seg[edges[:, 1]]
    edges = edges[(a == b) | (cls[a] != cls[b]) | partitionable[cls[a]]]
    same = seg[edges[:, 0]] == seg[edges[:, 1]]
    edge_costs = np.where(same, margin, -margin) + rng.uniform(-1, 1, len(edges))
    return node_costs, edges, edge_costs, labels, seg


def test_planted_optimum_is_found():
    rng = np.random.default_rng(1)
    for t in range(60):
        N = int(rng.integers(2, 10))
        K = int(rng.integers(1, 4))
        partitionable = rng.random(K) < 0.5
        node_costs, edges, edge_costs, labels, seg = _planted(rng, N, K, partitionable)
        opt = exact_amwc(node_costs, edges, edge_costs, partitionable)
        planted = numpy_objective(node_costs, edges, edge_costs, labels, seg)
        assert planted == pytest.approx(opt, abs=1e-6)  # the planted labelling is optimal
        for local_search in (False, True):
            res = solve_amwc(node_costs, edges, edge_costs, partitionable, local_search=local_search)
            assert res.objective == pytest.approx(opt, abs=1e-6), (t, local_search)
            np.testing.assert_array_equal(res.node_labels, labels)
            # same partition as the planted one
            assert len(set(zip(res.instance_ids.tolist(), seg.tolist()))) == seg.max() + 1


def test_local_search_improves_on_grids_and_is_never_worse():
    improved = 0
    for seed in range(12):
        inst = synthetic_instance(
            24, 32, 5, 2, [1, 2, 4], seed=seed, class_noise=2.0, edge_noise=2.0,
            noise_smoothing=1.0, num_things=6, num_stuff_regions=4,
        )
        args = (inst.node_costs, inst.edges, inst.edge_costs, inst.partitionable)
        plain = solve_amwc(*args, local_search=False)
        ls = solve_amwc(*args, local_search=True)
        check_feasible(inst.node_costs, inst.edges, inst.partitionable, ls)
        assert ls.objective <= plain.objective + 1e-9 * abs(plain.objective)
        improved += ls.objective < plain.objective - 1e-9 * abs(plain.objective)
    assert improved >= 3, f"local search improved only {improved} of 12 noisy instances"


def test_iid_noise_instance_is_seeded_unsmoothed_and_solvable():
    a = iid_noise_instance(24, 40, 6, 2, [1, 4], seed=7)
    b = iid_noise_instance(24, 40, 6, 2, [1, 4], seed=7)
    smooth = synthetic_instance(24, 40, 6, 2, [1, 4], seed=7)
    np.testing.assert_array_equal(a.node_costs, b.node_costs)
    np.testing.assert_array_equal(a.edge_costs, b.edge_costs)
    np.testing.assert_array_equal(a.semantic, smooth.semantic)  # same scene, other noise
    # i.i.d.: neighbouring pixels' noise is uncorrelated (smoothed noise is strongly correlated)
    def neighbour_corr(inst):
        true = np.take_along_axis(inst.node_costs, inst.semantic.reshape(-1, 1), 1)[:, 0].reshape(24, 40)
        return np.corrcoef(true[:, :-1].ravel(), true[:, 1:].ravel())[0, 1]
    assert abs(neighbour_corr(a)) < 0.25 < neighbour_corr(smooth)
    res = solve_amwc(a.node_costs, a.edges, a.edge_costs, a.partitionable)
    check_feasible(a.node_costs, a.edges, a.partitionable, res)
    with pytest.raises(ValueError, match="noise_smoothing"):
        iid_noise_instance(8, 8, 3, 1, [1], noise_smoothing=2.0)


# --------------------------------------------------------------------------- batch API
@pytest.mark.parametrize("num_threads", [0, 1, 2, 3])
def test_batch_equals_single(num_threads):
    insts = [
        synthetic_instance(20 + 3 * s, 30, 6, 3, [1, 3, 8], seed=s, class_noise=1.5, edge_noise=1.5)
        for s in range(5)
    ]
    batch = solve_amwc_batch(
        [(i.node_costs, i.edges, i.edge_costs, i.partitionable) for i in insts], num_threads=num_threads
    )
    mwc_batch = solve_mwc_batch([(i.node_costs, i.edges, i.edge_costs) for i in insts], num_threads=num_threads)
    assert len(batch) == len(insts) == len(mwc_batch)
    for inst, b, mb in zip(insts, batch, mwc_batch):
        single = solve_amwc(inst.node_costs, inst.edges, inst.edge_costs, inst.partitionable)
        for field in ("node_labels", "instance_ids", "edge_labels"):
            np.testing.assert_array_equal(getattr(b, field), getattr(single, field))
        assert b.objective == single.objective
        msingle = solve_mwc(inst.node_costs, inst.edges, inst.edge_costs)
        np.testing.assert_array_equal(mb.node_labels, msingle.node_labels)
        assert mb.objective == msingle.objective


@pytest.mark.parametrize("num_threads", [1, 2])
def test_batch_with_shared_edges_equals_single_solves(num_threads):
    """Instances that share one edges array share one graph structure inside the native batch
    solver (built once); every result must still be the instance's own single solve, also with
    duplicate and reversed edges (summed in the same order), float32 costs and warm starts."""
    from detectron2_cops import _C

    a = synthetic_instance(18, 26, 6, 3, [1, 3, 8], seed=11, class_noise=1.5, edge_noise=1.5)
    b = synthetic_instance(14, 20, 6, 3, [1, 2], seed=12, class_noise=1.5, edge_noise=1.5)
    rng = np.random.default_rng(0)
    # a's graph with every edge split into a reversed half and a forward half (duplicates)
    dup_edges = np.ascontiguousarray(np.concatenate([a.edges[:, ::-1], a.edges]), dtype=np.int64)
    dup_copy = dup_edges.copy()  # equal content, another array: its own structure
    instances = []
    for s in range(4):
        nc = a.node_costs + rng.normal(0, 1.0, a.node_costs.shape)
        ec = a.edge_costs + rng.normal(0, 0.5, a.edge_costs.shape)
        dup_costs = np.concatenate([0.3 * ec, 0.7 * ec])
        instances.append((nc, dup_edges, dup_costs, a.partitionable.astype(np.uint8)))
    instances.append((a.node_costs.astype(np.float32), dup_copy, np.concatenate([a.edge_costs, a.edge_costs]),
                      a.partitionable.astype(np.uint8)))
    for s in range(2):
        nc = (b.node_costs + rng.normal(0, 1.0, b.node_costs.shape)).astype(np.float32)
        instances.append((nc, b.edges, b.edge_costs.astype(np.float32), b.partitionable.astype(np.uint8)))
    # a warm-started instance on b's edges (the backward's case)
    start = solve_amwc(b.node_costs, b.edges, b.edge_costs, b.partitionable)
    instances.append((b.node_costs, b.edges, b.edge_costs, b.partitionable.astype(np.uint8),
                      start.node_labels.astype(np.int64), start.instance_ids.astype(np.int64)))
    batch = _C.solve_amwc_batch(instances, True, num_threads)
    assert len(batch) == len(instances)
    for inst, got in zip(instances, batch):
        want = _C.solve_amwc(*inst[:4], True, *inst[4:])
        for x, y in zip(got[:3], want[:3]):
            np.testing.assert_array_equal(x, y)
        assert got[3] == want[3]


def test_batch_with_shared_invalid_edges_names_the_first_instance():
    """A shared edges array that is invalid is reported for the first instance that uses it, with
    the message of a single solve (the native path, without the Python checks)."""
    from detectron2_cops import _C

    nc, edges, ec, part = tuple(_ok().values())[:4]
    bad = edges.copy()
    bad[1, 1] = 10_000
    good = (nc, edges, ec, part)
    with pytest.raises(ValueError, match=r"instance 1: edges must hold node ids in \[0, \d+\); edge 1 is"):
        _C.solve_amwc_batch([good, (nc, bad, ec, part), (nc, bad, ec, part), good], True, 2)
    loops = edges.copy()
    loops[2, 1] = loops[2, 0]
    with pytest.raises(ValueError, match=r"instance 0: edges must not contain self-loops; edge 2"):
        _C.solve_amwc_batch([(nc, loops, ec, part), (nc, loops, ec, part)], True, 1)
    # a NaN cost in an instance of a shared, valid edges array is still named
    nan_nc = nc.copy()
    nan_nc[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"instance 1: node_costs must be finite"):
        _C.solve_amwc_batch([good, (nan_nc, edges, ec, part), good], True, 2)


def test_strided_float32_costs_are_solved_as_given():
    """A float32 column subset (how the backward builds its MWC costs) gives the result of its
    C-contiguous copy."""
    from detectron2_cops import _C

    inst = synthetic_instance(16, 22, 8, 3, [1, 4], seed=4, class_noise=1.5, edge_noise=1.5)
    cols = np.array([7, 0, 3, 5, 1, 2])
    strided = inst.node_costs.astype(np.float32)[:, cols]
    assert not strided.flags["C_CONTIGUOUS"]
    part = np.zeros(len(cols), np.uint8)
    got = _C.solve_amwc(strided, inst.edges, inst.edge_costs, part)
    want = _C.solve_amwc(np.ascontiguousarray(strided), inst.edges, inst.edge_costs, part)
    for x, y in zip(got[:4], want[:4]):
        np.testing.assert_array_equal(x, y)


def test_deterministic_and_contiguity_independent():
    inst = synthetic_instance(30, 40, 7, 3, [1, 4, 8], seed=3)
    a = solve_amwc(inst.node_costs, inst.edges, inst.edge_costs, inst.partitionable)
    # the same instance through non-contiguous views and other dtypes
    nc = np.asfortranarray(inst.node_costs.astype(np.float64))
    edges = np.ascontiguousarray(inst.edges[:, ::-1].astype(np.int32))[:, ::-1]
    ec = np.repeat(inst.edge_costs, 2)[::2]
    b = solve_amwc(nc, edges, ec, inst.partitionable.astype(np.uint8))
    np.testing.assert_array_equal(a.node_labels, b.node_labels)
    np.testing.assert_array_equal(a.instance_ids, b.instance_ids)
    assert a.objective == pytest.approx(b.objective, rel=1e-12)


def test_duplicate_edges_are_summed():
    rng = np.random.default_rng(5)
    node_costs = rng.normal(0, 1, (6, 3))
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [0, 5]])
    costs = rng.normal(0, 2, len(edges))
    part = np.array([True, False, True])
    ref = solve_amwc(node_costs, edges, costs, part)
    # split every edge into three parallel copies, one reversed, with the same total cost
    dup_edges = np.concatenate([edges, edges[:, ::-1], edges])
    dup_costs = np.concatenate([0.5 * costs, 0.25 * costs, 0.25 * costs])
    dup = solve_amwc(node_costs, dup_edges, dup_costs, part)
    np.testing.assert_array_equal(ref.node_labels, dup.node_labels)
    np.testing.assert_array_equal(ref.instance_ids, dup.instance_ids)
    assert dup.objective == pytest.approx(ref.objective, rel=1e-12)
    np.testing.assert_array_equal(dup.edge_labels[:6], dup.edge_labels[6:12])


def test_empty_instances():
    for res in (
        solve_amwc(np.zeros((0, 3)), np.zeros((0, 2), np.int64), np.zeros(0), np.array([True, False, True])),
        solve_mwc(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.int64), np.zeros(0, np.float32)),
    ):
        assert res.node_labels.shape == (0,) and res.instance_ids.shape == (0,) and res.edge_labels.shape == (0,)
        assert res.objective == 0.0
    # no edges: every node at its cheapest class, each node its own segment
    nc = np.array([[1.0, -2.0], [0.5, 0.0], [3.0, 2.0]])
    res = solve_amwc(nc, np.zeros((0, 2), np.int64), np.zeros(0), np.array([True, True]))
    np.testing.assert_array_equal(res.node_labels, [1, 1, 1])
    np.testing.assert_array_equal(res.instance_ids, [0, 1, 2])
    assert res.objective == pytest.approx(-2.0 + 0.0 + 2.0)


def test_stuff_is_never_split_and_things_are():
    # a path of 4 nodes all preferring class 0; strongly repulsive middle edge
    nc = np.array([[-5.0, 0.0]] * 4)
    edges = np.array([[0, 1], [1, 2], [2, 3]])
    costs = np.array([3.0, -20.0, 3.0])
    thing = solve_amwc(nc, edges, costs, np.array([True, False]))
    assert thing.instance_ids.tolist() == [0, 0, 1, 1] and thing.edge_labels.tolist() == [0, 1, 0]
    stuff = solve_amwc(nc, edges, costs, np.array([False, False]))
    # stuff cannot be split: either one segment of class 0 (paying the repulsive edge) or part of
    # it switches to class 1 -- here switching two nodes costs 10 and saves 20
    check_feasible(nc, edges, np.array([False, False]), stuff)
    assert stuff.objective == pytest.approx(exact_amwc(nc, edges, costs, np.array([False, False])))


# --------------------------------------------------------------------------- grid graph
@pytest.mark.parametrize(
    "H,W,D,S",
    [(7, 9, [1, 2, 3, 4], None), (16, 5, [1, 4, 16], [1, 2, 3]), (1, 1, [1], None), (0, 4, [1, 2], None),
     (10, 13, [5], [4]), (12, 2, [3, 5], [1, 2])],
)
def test_grid_graph_convention_and_round_trip(H, W, D, S):
    g = GridGraph(H, W, D, S)
    S = S or [1] * len(D)
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=shape) for shape in g.map_shapes]
    values = g.maps_to_edge_values(maps)
    assert values.shape == (g.num_edges,)
    back = g.edge_values_to_maps(values, fill=0.0)
    valid = g.valid_masks()
    for m, b, v in zip(maps, back, valid):
        np.testing.assert_array_equal(b[v], m[v])
        assert np.all(b[~v] == 0)
    # the convention of the module docstring, position by position
    expected = []
    for d, s, shape in zip(D, S, g.map_shapes):
        lo, hi = edge_offsets(d)
        assert shape == (2, -(-H // s), -(-W // s))
        for ch in range(2):
            for a in range(shape[1]):
                for b in range(shape[2]):
                    y, x = a * s, b * s
                    if ch == 0 and y - lo >= 0 and y + hi <= H - 1:
                        expected.append(((y - lo) * W + x, (y + hi) * W + x))
                    if ch == 1 and x - lo >= 0 and x + hi <= W - 1:
                        expected.append((y * W + x - lo, y * W + x + hi))
    assert [tuple(e) for e in g.edges.tolist()] == expected
    # labels round trip as uint8, batched values too
    labels = (rng.random(g.num_edges) < 0.5).astype(np.uint8)
    np.testing.assert_array_equal(g.maps_to_edge_values(g.edge_values_to_maps(labels)), labels)
    batch = rng.normal(size=(3, g.num_edges))
    bmaps = g.edge_values_to_maps(batch)
    assert all(m.shape == (3,) + shape for m, shape in zip(bmaps, g.map_shapes))
    np.testing.assert_array_equal(g.maps_to_edge_values(bmaps), batch)


def test_grid_graph_bad_input():
    for args, match in [((4, 4, [0, 1]), r"edge_distances\[0\] must be >= 1, got 0"),
                        ((4, 4, [1, 2], [1]), "edge_sampling_intervals must have one entry per edge distance"),
                        ((4, 4, [1], [0]), r"edge_sampling_intervals\[0\] must be >= 1"),
                        ((-1, 4, [1]), "height must be >= 0, got -1"),
                        ((4, 2.0, [1]), "width must be an integer, got 2.0"),
                        # a string is not split into digits, bools and 4.0 are not distances
                        ((4, 4, "14"), "edge_distances must be a sequence of integers, got '14'"),
                        ((4, 4, [True, 2]), r"edge_distances\[0\] must be an integer, got True"),
                        ((4, 4, [4.0]), r"edge_distances\[0\] must be an integer, got 4.0"),
                        ((4, 4, ["a"]), r"edge_distances\[0\] must be an integer, got 'a'")]:
        with pytest.raises(ValueError, match=match):
            GridGraph(*args)
    for bad, match in ((0, "distance must be >= 1"), (-3, "distance must be >= 1"), (1.0, "distance must be an integer"),
                       (True, "distance must be an integer")):
        with pytest.raises(ValueError, match=match):
            edge_offsets(bad)
    g = GridGraph(4, 5, [1, 2])
    with pytest.raises(ValueError, match=r"maps must hold one map per edge distance \[1, 2\], .* got \[\[2, 4, 5\]\]"):
        g.maps_to_edge_values([np.zeros((2, 4, 5))])
    with pytest.raises(ValueError, match=r"of shapes \[\[2, 4, 5\], \[2, 4, 5\]\], got \[\[2, 4, 5\], \[2, 4, 4\]\]"):
        g.maps_to_edge_values([np.zeros((2, 4, 5)), np.zeros((2, 4, 4))])
    with pytest.raises(ValueError, match=r"of shapes \[\[3, 2, 4, 5\], \[3, 2, 4, 5\]\], got \[\[3, 2, 4, 5\], \[2, 2, 4, 5\]\]"):
        g.maps_to_edge_values([np.zeros((3, 2, 4, 5)), np.zeros((2, 2, 4, 5))])
    with pytest.raises(ValueError, match="values must have shape"):
        g.edge_values_to_maps(np.zeros(g.num_edges + 1))
    # A fill that the values' dtype cannot hold is refused instead of wrapping or raising OverflowError.
    for values, fill in ((np.zeros(g.num_edges, np.uint8), 300), (np.zeros(g.num_edges, np.uint8), -1),
                         (np.zeros(g.num_edges, np.int64), 0.5), (np.zeros(g.num_edges, np.float32), 1e300),
                         (np.zeros(g.num_edges, np.int64), "a")):
        with pytest.raises(ValueError, match="cannot be stored in the values' dtype"):
            g.edge_values_to_maps(values, fill=fill)
    assert g.edge_values_to_maps(np.zeros(g.num_edges, np.uint8), fill=255)[0].max() == 255
    assert np.isnan(g.edge_values_to_maps(np.zeros(g.num_edges), fill=np.nan)[1]).any()
    # A batch of 0 images reads [0, E] values.
    empty = g.maps_to_edge_values([np.zeros((0,) + s, np.float32) for s in g.map_shapes])
    assert empty.shape == (0, g.num_edges) and empty.dtype == np.float32


def _same_result(got, want):
    for x, y in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(x, y)
    assert got[3] == want[3]


def test_graph_structure_cache_is_reused_only_for_the_same_edges():
    """The native solvers reuse the structure of a recent edge set only when the node count and
    every edge entry are equal: an edges array changed in place (same object, shape and node
    count; one entry, anywhere, also in the last chunk of the comparison) gets the result of a
    solve without any cache, and a changed entry that is invalid is still reported."""
    from detectron2_cops import _C

    a = synthetic_instance(20, 30, 6, 3, [1, 3, 8], seed=21, class_noise=1.5, edge_noise=1.5)
    edges = np.ascontiguousarray(np.concatenate([a.edges] * 5), dtype=np.int64)  # 2E > 4096 entries
    ec = np.concatenate([a.edge_costs] * 5) / 5
    part = a.partitionable.astype(np.uint8)
    N = a.node_costs.shape[0]
    _C.clear_graph_structure_cache()
    cold = _C.solve_amwc(a.node_costs, edges, ec, part)
    _same_result(_C.solve_amwc(a.node_costs, edges, ec, part), cold)  # cached structure
    rng = np.random.default_rng(3)
    differs = 0
    for trial in range(24):
        row = [edges.shape[0] - 1, 0, int(rng.integers(edges.shape[0]))][trial % 3]
        col = int(rng.integers(2))
        other = edges[row, 1 - col]
        new = int(rng.integers(N - 1))
        edges[row, col] = new + (new >= other)  # a valid node, no self-loop
        ec[row] = 50.0  # a strong join: a stale structure would put it on the old pair
        got = _C.solve_amwc(a.node_costs, edges, ec, part)  # the cache holds the previous edges
        _C.clear_graph_structure_cache()
        want = _C.solve_amwc(a.node_costs, edges, ec, part)
        _same_result(got, want)
        differs += not np.array_equal(got[1], cold[1])
    assert differs > 0
    # invalid entries in a cached array's shape are still found (native path, no Python checks)
    _C.solve_amwc(a.node_costs, edges, ec, part)
    bad = edges.copy()
    bad[-1, 0] = N
    with pytest.raises(ValueError, match=rf"edges must hold node ids in \[0, {N}\); edge {edges.shape[0] - 1} is"):
        _C.solve_amwc(a.node_costs, bad, ec, part)
    bad = edges.copy()
    bad[7, 1] = bad[7, 0]
    with pytest.raises(ValueError, match="edges must not contain self-loops; edge 7"):
        _C.solve_amwc(a.node_costs, bad, ec, part)
    # the same edges with one node more are another graph
    more = np.concatenate([a.node_costs, a.node_costs[:1]])
    _same_result(_C.solve_amwc(more, edges, ec, part)[:4], _C.solve_amwc(more, edges.copy(), ec, part)[:4])
    assert _C.solve_amwc(more, edges, ec, part)[0].shape == (N + 1,)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_batches_over_more_edge_sets_than_the_cache_holds_equal_uncached_solves(num_threads):
    """Batches whose instances use three distinct edge sets (more than the cache keeps), solved
    twice so that cached, evicted and rebuilt structures all occur, on one and two threads:
    every result equals the instance's solve right after the cache was cleared."""
    from detectron2_cops import _C

    insts = [synthetic_instance(12 + 2 * g, 16, 5, 2, [1, 2 + g], seed=30 + g) for g in range(3)]
    rng = np.random.default_rng(1)
    batch = []
    for b in range(7):
        i = insts[b % 3]
        nc = i.node_costs + rng.normal(0, 1.0, i.node_costs.shape)
        batch.append((nc, i.edges, i.edge_costs, i.partitionable.astype(np.uint8)))
    wants = []
    for inst in batch:
        _C.clear_graph_structure_cache()
        wants.append(_C.solve_amwc(*inst))
    for _ in range(2):
        for got, want in zip(_C.solve_amwc_batch(batch, True, num_threads), wants):
            _same_result(got, want)
        for inst, want in zip(batch[::-1], wants[::-1]):
            _same_result(_C.solve_amwc(*inst), want)


def _solve_in_child(inst):
    from detectron2_cops import _C

    return _C.solve_amwc(*inst)[:4], [r[:4] for r in _C.solve_amwc_batch([inst, inst], True, 2)]


def test_solvers_work_in_a_forked_child_with_the_parents_cache_and_pool():
    """A child process started by fork() (DataLoader workers, multiprocessing) after the parent
    solved, and so filled the structure cache and started the thread pool, gets the parent's
    results from single and 2-thread batch solves. (The child starts its own cache and pool
    because the parent's locks may be held at the fork by threads the child lacks; that race
    is not reproduced here.)"""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("fork() is not available on this platform")
    from detectron2_cops import _C

    a = synthetic_instance(16, 20, 5, 2, [1, 3], seed=41)
    inst = (a.node_costs, a.edges, a.edge_costs, a.partitionable.astype(np.uint8))
    want = _C.solve_amwc(*inst)
    _C.solve_amwc_batch([inst, inst], True, 2)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        single, batch = pool.apply(_solve_in_child, (inst,))
    for got in [single, *batch]:
        _same_result(got, want)


# --------------------------------------------------------------------------- bad input
def _ok():
    """A valid instance as the keyword arguments of solve_amwc."""
    return dict(node_costs=np.zeros((4, 2), np.float32), edges=np.array([[0, 1], [1, 2], [2, 3]]),
                edge_costs=np.ones(3, np.float32), partitionable=np.array([True, False]),
                initial_labels=None, initial_clusters=None)


def _with(**changes):
    return lambda: {**_ok(), **changes}


_EDGES = np.array([[0, 1], [1, 2], [2, 3]])
_NAN_AT_1 = np.where(np.eye(4, 2, k=-1, dtype=bool), np.nan, 0.0)  # node 1, class 0

# Each kind of bad instance, refused by the native validation pass with the message given (the
# Python functions pass their arrays through unchanged).
_BAD_INSTANCES = [
    (_with(node_costs=np.zeros((1, 4, 2))), r"node_costs must have shape \[N, K\], got \[1, 4, 2\]"),
    (_with(node_costs=np.zeros((4, 2), np.int64)), "node_costs must be float32 or float64, got dtype int64"),
    (_with(node_costs=np.zeros((4, 2), complex)), "node_costs must be float32 or float64, got dtype complex128"),
    (_with(node_costs=_NAN_AT_1), r"node_costs must be finite with \|value\| < 2\^960 .*; found nan at node 1, class 0"),
    (_with(node_costs=np.full((4, 2), np.inf)), "node_costs must be finite .*; found inf at node 0"),
    # finite float64 costs whose sums could overflow (the bound keeps every sum finite)
    (_with(node_costs=np.full((4, 2), 2.0**960)), r"node_costs must be finite with \|value\| < 2\^960"),
    (_with(node_costs=np.zeros((4, 0)), partitionable=np.zeros(0, bool)), r"node_costs must have at least one class \(K >= 1\)"),
    (_with(edges=_EDGES[:, :1]), r"edges must have shape \[E, 2\], got \[3, 1\]"),
    (_with(edges=np.zeros((0, 3), np.int64), edge_costs=np.zeros(0)), r"edges must have shape \[E, 2\], got \[0, 3\]"),
    (_with(edges=_EDGES + 0.5), "edges must be an integer array, got dtype float64"),
    (_with(edges=np.array([[0, 1], [1, 4], [2, 3]])), r"edges must hold node ids in \[0, 4\); edge 1 is \(1, 4\)"),
    (_with(edges=np.array([[0, 1], [-1, 2], [2, 3]])), r"edges must hold node ids in \[0, 4\); edge 1 is \(-1, 2\)"),
    (_with(edges=np.array([[0, 1], [2, 2], [2, 3]])), r"edges must not contain self-loops; edge 1 is \(2, 2\)"),
    (_with(edge_costs=np.ones(2)), r"edge_costs must have shape \[E\] with E = len\(edges\) = 3, got \[2\]"),
    (_with(edge_costs=np.ones((3, 1))), r"edge_costs must have shape \[E\] .*, got \[3, 1\]"),
    (_with(edge_costs=np.array(["1", "2", "3"])), "edge_costs must be float32 or float64, got dtype <U1"),
    (_with(edge_costs=np.array([1.0, np.nan, 0.0])), "edge_costs must be finite .*; found nan at edge 1"),
    (_with(edge_costs=np.array([1.0, -1e300, 0.0])), r"edge_costs must be finite .*; found -1e\+300 at edge 1"),
    (_with(partitionable=np.array([True])),
     r"partitionable must have shape \[K\] with K = node_costs.shape\[1\] = 2, got \[1\]"),
    (_with(partitionable=np.array([0.5, 1.0])), "partitionable must be a bool array, got dtype float64"),
    # 256 would wrap to 0 in uint8
    (_with(partitionable=np.array([256, 0])), r"partitionable must be a bool array \(or integers 0 / 1\); entry 0 is 256"),
    (_with(initial_labels=np.array([0, 1, 2, 0])), r"initial_labels must hold classes in \[0, 2\); node 2 has 2"),
    (_with(initial_labels=np.array([0, -1, 0, 0])), r"initial_labels must hold classes in \[0, 2\); node 1 has -1"),
    (_with(initial_labels=np.zeros(5, np.int64)), r"initial_labels must have shape \[N\] = \[4\], got \[5\]"),
    (_with(initial_labels=np.zeros((4, 1), np.int64)), r"initial_labels must have shape \[N\] = \[4\], got \[4, 1\]"),
    (_with(initial_labels=np.zeros(4)), "initial_labels must be an integer array, got dtype float64"),
    (_with(initial_labels=np.zeros(4, bool)), "initial_labels must be an integer array, got dtype bool"),
    (_with(initial_labels=np.full(4, 2**32)), "initial_labels must hold int32 values; node 0 has 4294967296"),
    (_with(initial_labels=np.zeros(4, int), initial_clusters=np.zeros(3, int)), r"initial_clusters must have shape \[N\]"),
    (_with(initial_labels=np.zeros(4, int), initial_clusters=np.full(4, 2**40)), "initial_clusters must hold int32 values"),
    (_with(initial_clusters=np.zeros(4, int)), "initial_clusters given without initial_labels"),
]


@pytest.mark.parametrize("make,match", _BAD_INSTANCES)
def test_bad_instance_raises(make, match):
    """solve_amwc refuses each kind of bad instance; solve_amwc_batch names the instance."""
    bad = make()
    with pytest.raises(ValueError, match=match):
        solve_amwc(**bad)
    with pytest.raises(ValueError, match="instance 1: " + match):
        solve_amwc_batch([tuple(_ok().values()), tuple(bad.values())])


def test_batch_bad_input():
    """What only the batch functions receive: num_threads, the instance tuples, the node-cost
    perturbations (plain and relabelled), and a native entry of another length."""
    from detectron2_cops import _C

    good = tuple(_ok().values())[:4]
    assert solve_amwc_batch([]) == []
    for bad in (2**31, -1, 1.5, float("nan"), None, True, "2"):
        with pytest.raises(ValueError, match="num_threads must be"):
            solve_amwc_batch([good], num_threads=bad)
    with pytest.raises(ValueError, match="instance 0: expected .* length 7"):
        solve_amwc_batch([good + (None, None, None)])
    with pytest.raises(ValueError, match=r"instance 1: expected \(node_costs, edges, edge_costs\[, initial_labels\]\)"):
        solve_mwc_batch([good[:3], good + (None,)])
    with pytest.raises(ValueError, match="each batch entry must be"):
        _C.solve_amwc_batch([good + (None, None, None)], True, 1)

    a = synthetic_instance(8, 9, 4, 2, [1], seed=2)
    N, K = a.node_costs.shape
    inst = (a.node_costs, a.edges, a.edge_costs, a.partitionable)
    mwc = inst[:3] + (None,)
    d = np.zeros_like(a.node_costs)  # float32
    rows, lc = np.zeros((2, N), np.float32), np.array([1, 0, 3])

    def solve(pert, i=inst):
        return solve_amwc_batch([inst, i], node_cost_perturbations=[None, pert])

    with pytest.raises(ValueError, match=r"one entry per instance \(2\), got 1"):
        solve_amwc_batch([inst, inst], node_cost_perturbations=[(d, 1.0)])
    for pert, i, match in [
        (d, inst, r"a node-cost perturbation must be \(delta, scale\)"),
        ((rows, 1.0, lc), inst, "a node-cost perturbation must be .* with partitionable None"),
        ((d[:-1], 1.0), inst, rf"node_delta must have the shape of node_costs \[N, K\] = \[{N}, {K}\], got \[{N - 1}, {K}\]"),
        ((d.astype(np.float64), 1.0), inst, r"node_delta must have the dtype of node_costs \(float32\)"),
        ((d, "2"), inst, "the perturbation scale must be a real number, got '2'"),
        ((d, None), inst, "the perturbation scale must be a real number, got None"),
        ((d, float("inf")), inst, "the perturbation scale must be finite"),
        # a NaN delta, and perturbed costs that overflow the dtype: the perturbed costs are checked
        ((np.where(d == 0, np.nan, d), 1.0), inst, "node_costs must be finite .*; found nan at node 0"),
        ((np.full_like(d, np.finfo(d.dtype).max), 4.0), inst, "node_costs must be finite .*; found inf"),
        ((rows, 1.0, [1, 4, 0]), mwc, r"label_classes must hold class ids in \[0, 4\); label 1 has 4"),
        ((rows, 1.0, [-1, 0, 0]), mwc, r"label_classes must hold class ids in \[0, 4\); label 0 has -1"),
        ((rows, 1.0, [0.0, 1.0]), mwc, "label_classes must be an integer array, got dtype float64"),
        ((rows[:0], 1.0, np.zeros(0, np.int64)), mwc, r"label_classes must have shape \[L\] with L >= 1, got \[0\]"),
        ((rows, 1.0, np.zeros((1, 3), np.int64)), mwc, r"label_classes must have shape \[L\] with L >= 1, got \[1, 3\]"),
        ((np.zeros((4, N), np.float32), 1.0, lc), mwc,
         rf"node_delta must have shape \[M, N\] with N = {N} and M <= len\(label_classes\) = 3, got \[4, {N}\]"),
        ((np.zeros((2, N - 1), np.float32), 1.0, lc), mwc, r"node_delta must have shape \[M, N\]"),
        ((rows.astype(np.float64), 1.0, lc), mwc, r"node_delta must have the dtype of node_costs \(float32\)"),
        ((rows, 1.0, lc), mwc + (np.full(N, 3),), r"initial_labels must hold classes in \[0, 3\)"),  # a class, not a label
    ]:
        with pytest.raises(ValueError, match="instance 1: " + match):
            solve(pert, i)
    # native entries: a relabelled one with a partitionable of another length than L
    with pytest.raises(ValueError, match=r"instance 0: partitionable must have shape \[L\] with L = len\(label_classes\) = 3"):
        _C.solve_amwc_batch([inst + (None, None, rows, 1.0, lc)], True, 1)


def test_objective_checks_labels_and_ids():
    nc, edges, ec = (_ok()[k] for k in ("node_costs", "edges", "edge_costs"))
    ids = np.array([0, 0, 1, 1])
    assert amwc_objective(nc, edges, ec, np.zeros(4, np.int64), ids) == 1.0
    # int64 values checked before any narrowing (2**32 would wrap to 0)
    with pytest.raises(ValueError, match="instance_ids must hold int32 values; node 2 has 4294967296"):
        amwc_objective(nc, edges, ec, np.zeros(4, np.int64), np.array([0, 0, 2**32, 2**32]))
    with pytest.raises(ValueError, match=r"node_labels must hold classes in \[0, 2\); node 3 has 2"):
        amwc_objective(nc, edges, ec, np.array([0, 1, 1, 2]), ids)
    with pytest.raises(ValueError, match="node_labels must be an integer array, got dtype float64"):
        amwc_objective(nc, edges, ec, np.array([0.9, 1.7, 0.2, 0.0]), ids)
    with pytest.raises(ValueError, match=r"instance_ids must have shape \[N\] = \[4\], got \[3\]"):
        amwc_objective(nc, edges, ec, np.zeros(4, np.int64), ids[:3])
    with pytest.raises(ValueError, match="edges must hold node ids"):
        amwc_objective(nc, edges + 1, ec, np.zeros(4, np.int64), ids)


_RACE_CHILD = """
import threading
import numpy as np
from detectron2_cops import _C
from detectron2_cops.solvers import clear_graph_structure_cache, solve_amwc
from detectron2_cops.solvers.synthetic import synthetic_instance
inst = synthetic_instance(48, 48, 5, 2, [1, 4, 16], seed=1)
E = np.ascontiguousarray(inst.edges, dtype=np.int64)
ids = (np.arange(48 * 48, dtype=np.int64) % 7).reshape(48, 48)
maps = [np.ones((2, 48, 48), np.float32)] * 3
TARGET, orig = (E, E.copy()) if MODE == "solve" else (ids.reshape(-1), ids.reshape(-1).copy())
stop = False
def write():
    while not stop:
        TARGET[::7] = 2**40
        TARGET[:] = orig
t = threading.Thread(target=write)
t.start()
outcomes = {"done": 0, "ValueError": 0}
try:
    for _ in range(200):
        clear_graph_structure_cache()
        try:
            if MODE == "solve":
                solve_amwc(inst.node_costs, E, inst.edge_costs, inst.partitionable)
            else:
                _C.grid_edge_sums(ids, maps, [1, 4, 16], [1, 1, 1], 7)
            outcomes["done"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
finally:
    stop = True
    t.join()
print(outcomes)
"""


@pytest.mark.parametrize("mode", ["solve", "grid_edge_sums"])
def test_arrays_written_by_another_thread_during_native_calls_never_crash(mode):
    """The native code reads the edges once, into its checked int32 copy, and grid_edge_sums
    range-checks every segment id where it uses it: a thread that writes invalid ids into the arrays
    while the calls run (GIL released) gives errors or results, never an out-of-range index (the
    build read the edges again after validating them and crashed, 3 runs of 3). Run in a child
    process, so that a crash fails this test instead of ending the session."""
    code = f"MODE = {mode!r}\n" + _RACE_CHILD
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"child exited with {proc.returncode}: {proc.stderr[-2000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("{'done': ") and sum(eval(last).values()) == 200


# --------------------------------------------------------------------------- warm start
def _perturbed(seed, K=5, things=2):
    """A noisy grid instance and a second one with perturbed node costs (as in the layer's
    backward), with the first one's solution as the warm start of the second."""
    inst = synthetic_instance(20, 28, K, things, [1, 2, 4], seed=seed, class_noise=1.5, edge_noise=1.5,
                              num_things=4, num_stuff_regions=3)
    rng = np.random.default_rng(seed)
    nc = inst.node_costs + rng.normal(0.0, 1.0, inst.node_costs.shape)
    return inst, nc


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_warm_start_is_feasible_and_never_worse_than_its_start(dtype):
    for seed in range(8):
        inst, nc = _perturbed(seed)
        nc = nc.astype(dtype)
        start = solve_amwc(inst.node_costs, inst.edges, inst.edge_costs, inst.partitionable)
        # AMWC, start = labels + instance ids
        res = solve_amwc(nc, inst.edges, inst.edge_costs, inst.partitionable,
                         initial_labels=start.node_labels, initial_clusters=start.instance_ids)
        check_feasible(nc, inst.edges, inst.partitionable, res)
        start_obj = amwc_objective(nc, inst.edges, inst.edge_costs, start.node_labels, start.instance_ids)
        assert res.objective <= start_obj + 1e-9 * abs(start_obj)
        assert res.info["gaec_objective"] == pytest.approx(start_obj, rel=1e-9)
        assert res.info["gaec_contractions"] == 0
        assert res.objective == pytest.approx(
            numpy_objective(nc, inst.edges, inst.edge_costs, res.node_labels, res.instance_ids), rel=1e-9)
        # MWC (labels only; clusters = labels), any integer dtype
        labels = start.node_labels.astype(np.int64)
        mwc = solve_mwc(nc, inst.edges, inst.edge_costs, initial_labels=labels)
        none = np.zeros(nc.shape[1], bool)
        check_feasible(nc, inst.edges, none, mwc)
        mwc_start = amwc_objective(nc, inst.edges, inst.edge_costs, labels, labels)
        assert mwc.objective <= mwc_start + 1e-9 * abs(mwc_start)
        # without local search the start comes back unchanged
        same = solve_mwc(nc, inst.edges, inst.edge_costs, initial_labels=labels, local_search=False)
        np.testing.assert_array_equal(same.node_labels, labels)
        assert same.objective == pytest.approx(mwc_start, rel=1e-12)
        # the batch API (5th tuple element) gives the same result
        (b,) = solve_mwc_batch([(nc, inst.edges, inst.edge_costs, labels)])
        np.testing.assert_array_equal(b.node_labels, mwc.node_labels)


def test_warm_start_from_a_good_labelling_beats_or_matches_cold_on_small_perturbations():
    """Starting from the unperturbed solution, small perturbations are solved at least as well as
    by GAEC from singletons, on average (the property the layer's backward relies on)."""
    gaps = []
    for seed in range(8):
        inst, _ = _perturbed(seed)
        rng = np.random.default_rng(100 + seed)
        nc = inst.node_costs + rng.normal(0.0, 0.3, inst.node_costs.shape)
        start = solve_amwc(inst.node_costs, inst.edges, inst.edge_costs, inst.partitionable)
        warm = solve_amwc(nc, inst.edges, inst.edge_costs, inst.partitionable,
                          initial_labels=start.node_labels, initial_clusters=start.instance_ids)
        cold = solve_amwc(nc, inst.edges, inst.edge_costs, inst.partitionable)
        gaps.append((warm.objective - cold.objective) / abs(cold.objective))
    assert np.mean(gaps) <= 1e-3, gaps


# --------------------------------------------------------------------------- post-processing helper
def _grid_edge_sums_reference(ids, maps, distances, intervals, num_segments):
    """``_C.grid_edge_sums`` in NumPy: each distance's edges and values from ``GridGraph``, summed
    per segment with ``np.bincount``."""
    h, w = ids.shape
    out = [[], [], [], []]
    for m, d, s in zip(maps, distances, intervals):
        grid = GridGraph(h, w, [d], [s])
        v = grid.maps_to_edge_values([m]).astype(np.float64)
        su, sv = ids.reshape(-1)[grid.edges[:, 0]], ids.reshape(-1)[grid.edges[:, 1]]
        inside = su == sv
        ends = np.concatenate([su[~inside], sv[~inside]])
        out[0].append(np.bincount(su[inside], weights=v[inside], minlength=num_segments))
        out[1].append(np.bincount(su[inside], minlength=num_segments))
        out[2].append(np.bincount(ends, weights=np.tile(v[~inside], 2), minlength=num_segments))
        out[3].append(np.bincount(ends, minlength=num_segments))
    return [np.stack(x).reshape(len(maps), num_segments) for x in out]


@pytest.mark.parametrize(
    "h, w, distances, intervals",
    [(12, 17, [1, 3, 4, 5, 20], [1, 1, 2, 3, 1]), (9, 5, [2, 3, 7], [4, 2, 5]), (1, 1, [1], [1]), (0, 6, [1, 2], [1, 2])],
)
def test_grid_edge_sums_matches_the_grid_graph(h, w, distances, intervals):
    """``_C.grid_edge_sums`` (the edge term of the instance scores): per distance and segment, sum
    and count of the map values on the GridGraph edges inside the segment and on those leaving it
    (counted for both ends), read straight off the maps (strided ones too); distance 20 exceeds
    the 12 x 17 grid, so its maps hold no edge."""
    from detectron2_cops import _C

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 9, (h, w))
    ids[:3, :4] = 4  # some edges inside a segment
    maps = [rng.normal(0, 1, shape).astype(np.float32) for shape in GridGraph(h, w, distances, intervals).map_shapes]
    maps[0] = np.asfortranarray(maps[0])
    got = _C.grid_edge_sums(ids, maps, distances, intervals, 11)
    want = _grid_edge_sums_reference(ids, maps, distances, intervals, 11)
    for g, r in zip(got, want):
        assert g.shape == (len(distances), 11)
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)
    assert got[1].dtype == got[3].dtype == np.int64 and got[0].dtype == got[2].dtype == np.float64
    assert got[1].sum() + got[3].sum() // 2 == GridGraph(h, w, distances, intervals).num_edges


def test_grid_edge_sums_rejects_bad_input():
    """Bad ids, dtypes, shapes, numbers of maps and non-finite values on edges are named."""
    from detectron2_cops import _C

    rng = np.random.default_rng(4)
    distances, intervals = [1, 3], [1, 2]
    ids = rng.integers(0, 5, (8, 11))
    maps = [rng.normal(0, 1, shape).astype(np.float32) for shape in GridGraph(8, 11, distances, intervals).map_shapes]
    for bad_id in (-1, 5):
        bad = ids.copy()
        bad[2, 3] = bad_id
        with pytest.raises(ValueError, match=rf"ids must hold segment ids in \[0, 5\); pixel \(2, 3\) has {bad_id}"):
            _C.grid_edge_sums(bad, maps, distances, intervals, 5)
    with pytest.raises(ValueError, match="ids must be an integer array, got dtype float64"):
        _C.grid_edge_sums(ids.astype(np.float64), maps, distances, intervals, 5)
    with pytest.raises(ValueError, match=r"ids must have shape \[h, w\], got \[88\]"):
        _C.grid_edge_sums(ids.reshape(-1), maps, distances, intervals, 5)
    with pytest.raises(ValueError, match=r"maps\[1\] must be a float32 array, got dtype float64"):
        _C.grid_edge_sums(ids, [maps[0], maps[1].astype(np.float64)], distances, intervals, 5)
    with pytest.raises(ValueError, match=r"maps\[1\] must have shape \[2, 4, 6\] \(distance 3, interval 2\), got \[2, 8, 11\]"):
        _C.grid_edge_sums(ids, [maps[0], maps[0]], distances, intervals, 5)
    with pytest.raises(ValueError, match=r"maps must hold one map per edge distance \(2\), got 1"):
        _C.grid_edge_sums(ids, maps[:1], distances, intervals, 5)
    with pytest.raises(ValueError, match="edge_sampling_intervals must have one entry per edge distance"):
        _C.grid_edge_sums(ids, maps, distances, [1], 5)
    with pytest.raises(ValueError, match="edge distances and sampling intervals must be >= 1; entry 1 is 0 and 2"):
        _C.grid_edge_sums(ids, maps, [1, 0], intervals, 5)
    for bad_value in (np.nan, np.inf, -np.inf):
        bad = [m.copy() for m in maps]
        bad[1][1, 2, 3] = bad_value
        with pytest.raises(ValueError, match=r"maps must hold finite values; maps\[1\] has .* at \(1, 2, 3\)"):
            _C.grid_edge_sums(ids, bad, distances, intervals, 5)
    bad = [m.copy() for m in maps]
    bad[0][0, 7, 5] = np.nan  # distance 1, channel 0 at the last row: joins rows 7 and 8, no edge, not read
    _C.grid_edge_sums(ids, bad, distances, intervals, 5)


# --------------------------------------------------------------------------- node-cost perturbations
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_node_cost_perturbations_equal_materialised_costs(dtype):
    """``node_cost_perturbations=(delta, scale)`` solves ``node_costs + scale * delta`` formed on
    the worker exactly as NumPy forms it (multiply in the dtype, then add), warm-started or not."""
    a = synthetic_instance(18, 24, 6, 3, [1, 3, 6], seed=21, class_noise=1.5, edge_noise=1.5)
    rng = np.random.default_rng(1)
    base = a.node_costs.astype(dtype)
    delta = rng.normal(0, 1e-3, base.shape).astype(dtype)
    start = solve_amwc(base, a.edges, a.edge_costs, a.partitionable)
    warm = (start.node_labels, start.instance_ids)
    scales = [0.5, 137.25, 4999.9]
    for extra in ((), warm):
        plain = solve_amwc_batch(
            [(np.multiply(delta, dtype(s)) + base, a.edges, a.edge_costs, a.partitionable) + extra for s in scales]
        )
        fused = solve_amwc_batch([(base, a.edges, a.edge_costs, a.partitionable) + extra] * len(scales),
                                 node_cost_perturbations=[(delta, s) for s in scales], num_threads=2)
        for p, f in zip(plain, fused):
            np.testing.assert_array_equal(p.node_labels, f.node_labels)
            np.testing.assert_array_equal(p.instance_ids, f.instance_ids)
            assert p.objective == f.objective
    # None entries are unperturbed
    mixed = solve_amwc_batch([(base, a.edges, a.edge_costs, a.partitionable)] * 2,
                             node_cost_perturbations=[None, (delta, 0.0)])
    assert mixed[0].objective == start.objective == mixed[1].objective


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relabelled_perturbations_equal_materialised_multiway_cuts(dtype):
    """``(delta, scale, label_classes)`` solves the multiway cut over ``L`` labels with node costs
    ``node_costs[:, label_classes] + scale * [delta.T | 0]`` (the backward's MWC, COPS Sec. 3.5),
    formed as NumPy forms it: the same solutions as from the materialised ``[N, L]`` costs, cold
    and warm, for instances that share their arrays (one expansion per group) and for ones that
    do not, and next to instances of the other forms in one batch."""
    a = synthetic_instance(18, 24, 6, 3, [1, 3, 6], seed=22, class_noise=1.5, edge_noise=1.5)
    rng = np.random.default_rng(4)
    base = a.node_costs.astype(dtype)
    N, K = base.shape
    label_classes = np.array([3, 0, 3, 5, 1, 2, 4], dtype=np.int64)  # a class twice, all classes
    L = len(label_classes)
    scales = [0.5, 137.25, 4999.9]
    for M in (0, 4, L):
        rows = rng.normal(0, 1e-3, (M, N)).astype(dtype)
        padded = np.zeros((N, L), dtype)
        padded[:, :M] = rows.T
        warm = (rng.integers(0, L, N),)
        for extra in ((), warm):
            plain = solve_mwc_batch(
                [(np.multiply(padded, dtype(s)) + base[:, label_classes], a.edges, a.edge_costs) + extra for s in scales]
            )
            shared = solve_amwc_batch([(base, a.edges, a.edge_costs, None) + extra] * len(scales),
                                      node_cost_perturbations=[(rows, s, label_classes) for s in scales], num_threads=2)
            separate = solve_amwc_batch(
                [(base.copy(), a.edges, a.edge_costs, None) + extra for _ in scales],
                node_cost_perturbations=[(rows.copy(), s, list(label_classes)) for s in scales], num_threads=2)
            for p, f, g in zip(plain, shared, separate):
                assert f.node_labels.max() < L
                for r in (f, g):
                    np.testing.assert_array_equal(p.node_labels, r.node_labels)
                    np.testing.assert_array_equal(p.instance_ids, r.instance_ids)
                    assert p.objective == r.objective
    # mixed with an AMWC instance and a plain perturbation in one batch
    amwc = (base, a.edges, a.edge_costs, a.partitionable)
    delta = rng.normal(0, 1e-3, base.shape).astype(dtype)
    mixed = solve_amwc_batch([amwc, amwc, (base, a.edges, a.edge_costs, None)],
                             node_cost_perturbations=[None, (delta, 2.0), (rows, 2.0, label_classes)])
    assert mixed[0].objective == solve_amwc(*amwc).objective
    assert mixed[1].objective == solve_amwc(np.multiply(delta, dtype(2.0)) + base, *amwc[1:]).objective
    padded = np.zeros((N, L), dtype)
    padded[:, :len(rows)] = rows.T
    assert mixed[2].objective == solve_mwc(np.multiply(padded, dtype(2.0)) + base[:, label_classes], a.edges,
                                           a.edge_costs).objective


def test_incremental_cluster_passes_make_the_same_moves_as_rebuilt_ones():
    """A cluster pass after one that moved segments (no node move in between) updates that pass's
    segments and evaluates only those next to a move; it must make exactly the moves a pass that
    rebuilds all segments makes: the same solutions, objectives and move counts, for AMWC and
    MWC from GAEC, AMWC warm-started with clusters and warm-started MWC (the layer's backward),
    float32 and float64, on spatially correlated and i.i.d.-noise instances. (Among these are
    instances on which an update that keeps a union's internal edges, or that skips the
    neighbours of moved segments, makes other moves.)"""
    from detectron2_cops import _C

    batch = []
    for seed, maker, (H, W), K in ((1, iid_noise_instance, (33, 47), 5), (3, synthetic_instance, (48, 96), 19),
                                   (2, synthetic_instance, (40, 56), 40)):
        rng = np.random.default_rng(seed)
        if maker is synthetic_instance:
            a = maker(H, W, K, max(1, K // 3), [1, 3, 8], seed=seed, class_noise=1.0 + seed % 3, edge_noise=1.0 + seed % 2)
        else:
            a = maker(H, W, K, max(1, K // 3), [1, 4], seed=seed)
        for dt in (np.float64, np.float32):
            nc = np.ascontiguousarray(a.node_costs.astype(dt))
            ec = a.edge_costs.astype(dt)
            part = a.partitionable.astype(np.uint8)
            start = solve_amwc(nc, a.edges, ec, a.partitionable)
            init = start.node_labels.astype(np.int64)
            flip = rng.random(len(init)) < 0.05
            init[flip] = rng.integers(0, K, int(flip.sum()))
            noisy = np.ascontiguousarray(nc + rng.normal(0, 0.3, nc.shape).astype(dt))
            batch += [
                (nc, a.edges, ec, part),
                (nc, a.edges, ec, np.zeros(K, np.uint8)),
                (nc, a.edges, ec, part, init, start.instance_ids.astype(np.int64)),
                (noisy, a.edges, ec, np.zeros(K, np.uint8), init),
            ]
    inc = _C.solve_amwc_batch(batch, True, 2)
    full = _C.solve_amwc_batch(batch, True, 2, incremental_cluster_passes=False)
    for x, y in zip(inc, full):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
        np.testing.assert_array_equal(x[2], y[2])
        assert x[3] == y[3]
        assert x[4]["local_search_moves"] == y[4]["local_search_moves"]
        assert x[4]["local_search_rounds"] == y[4]["local_search_rounds"]
        assert y[4]["incremental_cluster_passes"] == 0
        assert x[4]["incremental_cluster_passes"] < max(1, x[4]["local_search_rounds"])
    assert sum(x[4]["incremental_cluster_passes"] for x in inc) >= 10
