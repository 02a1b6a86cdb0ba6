"""Tests of the differentiable AMWC layer (detectron2_cops.layers.amwc_layer); no Detectron2.

The estimator is checked against a direct implementation of the COPS backward (MWC
transformation + Vlastelica et al.'s black-box differentiation, written here independently with
``solve_mwc`` / ``solve_amwc``), and end to end by optimising costs with the PQ surrogate.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LD, masks_from_ids
from detectron2_cops.layers import (
    AMWCLayer,
    AMWCOutput,
    CostCalibration,
    NonFiniteError,
    PanopticQualitySurrogate,
    panoptic_quality,
)
from detectron2_cops.solvers import GridGraph, solve_amwc, solve_mwc
from detectron2_cops.solvers.synthetic import synthetic_instance


# ----------------------------------------------------------------------------- helpers
def synthetic_costs(seeds, H=14, W=18, K=6, num_things=3, distances=(1, 2, 4), dtype=torch.float64):
    """Leaf cost tensors ``[B, K, H, W]`` and edge maps for a batch of synthetic instances."""
    insts = [synthetic_instance(H, W, K, num_things, list(distances), seed=s, num_stuff_regions=3,
                                num_things=3) for s in seeds]
    sem = np.stack([i.node_costs.reshape(H, W, K).transpose(2, 0, 1) for i in insts])
    sc = torch.tensor(sem, dtype=dtype, requires_grad=True)
    grid = insts[0].grid
    maps = grid.edge_values_to_maps(np.stack([i.edge_costs for i in insts]))
    ec = [torch.tensor(m, dtype=dtype, requires_grad=True) for m in maps]
    return sc, ec, insts


def make_layer(K=6, num_things=3, distances=(1, 2, 4), **kw):
    return AMWCLayer(K, list(range(num_things)), list(distances), **kw)


def pred_ids(out: AMWCOutput, things):
    lab = out.node_labels.numpy()
    ins = out.instance_ids.numpy()
    return lab * LD + np.where(np.isin(lab, list(things)), ins + 1, 0)


def grads_of(sc, ec):
    return torch.cat([sc.grad.flatten()] + [e.grad.flatten() for e in ec])


def zero_grads(sc, ec):
    sc.grad = None
    for e in ec:
        e.grad = None


# ----------------------------------------------------------------------------- forward
def test_forward_equals_direct_solver_and_masks_partition_pixels():
    sc, ec, insts = synthetic_costs([3])
    layer = make_layer()
    out = layer(sc, ec)[0]
    inst = insts[0]
    ref = solve_amwc(inst.node_costs.astype(np.float64), inst.edges, inst.edge_costs.astype(np.float64),
                     inst.partitionable)
    H, W = 14, 18
    assert out.node_labels.dtype == torch.int64 and out.instance_ids.dtype == torch.int64
    np.testing.assert_array_equal(out.node_labels.numpy().reshape(-1), ref.node_labels)
    np.testing.assert_array_equal(out.instance_ids.numpy().reshape(-1), ref.instance_ids)
    assert out.objective == pytest.approx(ref.objective, rel=1e-12, abs=1e-9)
    grid = inst.grid
    for got, want, valid in zip(out.edge_labels, grid.edge_values_to_maps(ref.edge_labels), grid.valid_masks()):
        assert got.dtype == torch.uint8
        np.testing.assert_array_equal(got.numpy(), want)
        assert not got.numpy()[~valid].any()  # 0 at invalid positions

    # Edge labels are consistent with the instance ids.
    ids = out.instance_ids.numpy().reshape(-1)
    cut = grid.maps_to_edge_values([m.numpy() for m in out.edge_labels])
    np.testing.assert_array_equal(cut, ids[grid.edges[:, 0]] != ids[grid.edges[:, 1]])

    # Masks: every pixel in exactly one mask; stuff one per class present, things one per instance.
    masks = out.masks.detach()
    assert masks.shape[1:] == (H, W) and masks.dtype == sc.dtype
    assert torch.equal(masks.sum(0), torch.ones(H, W, dtype=masks.dtype))
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    lab, classes = out.node_labels, out.mask_classes.tolist()
    things = set(range(3))
    stuff_present = sorted(set(lab.unique().tolist()) - things)
    assert [c for c in classes if c not in things] == stuff_present
    for m, c in zip(masks, classes):
        if c in things:
            seg = torch.unique(out.instance_ids[m.bool()])
            assert seg.numel() == 1
            assert torch.equal(m.bool(), out.instance_ids == seg)
        else:
            assert torch.equal(m.bool(), lab == c)
    thing_segments = torch.unique(out.instance_ids[torch.isin(lab, torch.tensor(sorted(things)))])
    assert sum(c in things for c in classes) == thing_segments.numel()


def test_stuff_class_in_disconnected_components_gives_one_mask():
    # Class 1 (stuff) on the left and right thirds, a thing (class 0) column band in the middle.
    H, W, K = 6, 9, 2
    c = torch.full((1, K, H, W), 1.0, dtype=torch.float64)
    c[0, 1] = -1.0
    c[0, 1, :, 3:6] = 1.0
    c[0, 0, :, 3:6] = -1.0
    layer = AMWCLayer(K, [0], [1])
    grid = layer.grid(H, W)
    ec = [torch.tensor(grid.edge_values_to_maps(np.full(grid.num_edges, 0.5))[0][None])]
    out = layer(c, ec)[0]
    assert out.mask_classes.tolist() == [1, 0]
    assert torch.equal(out.masks[0].bool(), out.node_labels == 1)
    assert len(torch.unique(out.instance_ids[out.node_labels == 1])) == 2  # two components, one mask


def test_batch_equals_per_image():
    sc, ec, _ = synthetic_costs([0, 1, 2])
    layer = make_layer(num_samples=2, lambda_min=300.0, lambda_max=300.0)
    outs = layer(sc, ec, generator=torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(7)
    weights = [torch.rand(o.masks.shape, generator=rng, dtype=torch.float64) for o in outs]
    sum(((o.masks - 0.5) * w).sum() for o, w in zip(outs, weights)).backward()
    batch_grads = [sc.grad.clone()] + [e.grad.clone() for e in ec]
    for b in range(3):
        sc1 = sc.detach()[b:b + 1].clone().requires_grad_()
        ec1 = [e.detach()[b:b + 1].clone().requires_grad_() for e in ec]
        o1 = layer(sc1, ec1)[0]
        o = outs[b]
        assert torch.equal(o1.node_labels, o.node_labels) and torch.equal(o1.instance_ids, o.instance_ids)
        assert torch.equal(o1.masks, o.masks.detach()) and torch.equal(o1.mask_classes, o.mask_classes)
        assert o1.objective == o.objective
        assert all(torch.equal(x, y) for x, y in zip(o1.edge_labels, o.edge_labels))
        ((o1.masks - 0.5) * weights[b]).sum().backward()
        torch.testing.assert_close(sc1.grad[0], batch_grads[0][b], rtol=0, atol=1e-12)
        for e1, g in zip(ec1, batch_grads[1:]):
            torch.testing.assert_close(e1.grad[0], g[b], rtol=0, atol=1e-12)


def test_float32_costs_give_float32_outputs_and_gradients():
    sc, ec, _ = synthetic_costs([5], dtype=torch.float32)
    out = make_layer()(sc, ec)[0]
    assert out.masks.dtype == torch.float32
    (out.masks * torch.linspace(-1, 1, out.masks.numel()).reshape(out.masks.shape)).sum().backward()
    assert sc.grad.dtype == torch.float32 and all(e.grad.dtype == torch.float32 for e in ec)
    assert sc.grad.abs().sum() > 0


def test_forward_batched_outputs_are_consistent():
    sc, ec, _ = synthetic_costs([12, 13])
    layer = make_layer()
    out = layer.forward_batched(sc, ec)
    per_image = layer(sc, ec)
    B, K, H, W = sc.shape
    assert out.node_one_hot.shape == (B, K, H, W) and out.node_one_hot.requires_grad
    assert torch.equal(out.node_one_hot.argmax(1), out.node_labels)
    assert torch.equal(out.node_one_hot.sum(1), torch.ones(B, H, W, dtype=sc.dtype))
    assert out.mask_image_index.tolist() == sorted(out.mask_image_index.tolist())
    for b, o in enumerate(per_image):
        sel = out.mask_image_index == b
        assert torch.equal(out.masks[sel], o.masks) and torch.equal(out.mask_classes[sel], o.mask_classes)
        assert out.objectives[b].item() == o.objective
        for m, u8 in zip(out.edge_label_maps, o.edge_labels):
            assert m.requires_grad and torch.equal(m[b].to(torch.uint8), u8)


def test_layer_without_edges_and_single_pixel_images():
    layer = AMWCLayer(3, [0], [])
    sc = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                     requires_grad=True)
    outs = layer(sc, [])
    assert all(o.edge_labels == [] for o in outs)
    # Without edges every pixel takes its cheapest class; things are single pixels.
    for b, o in enumerate(outs):
        assert torch.equal(o.node_labels, sc.detach()[b].argmin(0))
    r = torch.randn(outs[0].masks.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (outs[0].masks * r).sum().backward()
    assert sc.grad[0].abs().sum() > 0 and torch.count_nonzero(sc.grad[1]) == 0

    layer = AMWCLayer(3, [0], [1])
    one = torch.tensor([[[[0.5]], [[-1.0]], [[0.0]]]], dtype=torch.float64, requires_grad=True)
    out = layer(one, [torch.zeros(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)])[0]
    assert out.node_labels.tolist() == [[1]] and out.mask_classes.tolist() == [1]
    assert [m.tolist() for m in out.edge_labels] == [[[[0]], [[0]]]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_costs_match_cpu():
    sc, ec, _ = synthetic_costs([14])
    layer = make_layer(num_samples=2, lambda_min=300.0, lambda_max=300.0)
    sc_cuda = sc.detach().cuda().requires_grad_()
    ec_cuda = [e.detach().cuda().requires_grad_() for e in ec]
    out = layer(sc, ec)[0]
    out_cuda = layer(sc_cuda, ec_cuda)[0]
    assert out_cuda.masks.device.type == "cuda" and out_cuda.node_labels.device.type == "cuda"
    assert torch.equal(out_cuda.masks.cpu(), out.masks.detach())
    w = torch.linspace(-0.01, 0.01, out.masks.numel(), dtype=torch.float64).reshape(out.masks.shape)
    (out.masks * w).sum().backward()
    (out_cuda.masks * w.cuda()).sum().backward()
    assert sc_cuda.grad.device.type == "cuda"
    torch.testing.assert_close(sc_cuda.grad.cpu(), sc.grad, rtol=0, atol=1e-12)
    for a, b in zip(ec_cuda, ec):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- backward vs direct
def _direct_estimate(c_V, c_E, grid, fwd_labels, fwd_cut, seg_classes, dP, dX, dY, lam, things,
                     warm=None, local_search=True):
    """The COPS estimator for one image and one lambda, written out label by label.

    c_V [N, K], c_E [E], dP [M, N], dX [K, N], dY [E]; returns (grad_V [N, K], grad_E [E]).
    ``warm = (fwd_masks [M, N] bool, fwd_instance_ids [N])``: start the perturbed solve from the
    forward solution (``backward_warm_start``): each pixel at its mask's MWC label.
    ``local_search``: the solves' local search, as the layer's.
    """
    N, K = c_V.shape
    if np.any(dP):
        free = [k for k in range(K) if k not in set(seg_classes)]
        label_class = list(seg_classes) + free
        cols = [c_V[:, k] + lam * (dP[m] + dX[k]) for m, k in enumerate(seg_classes)]
        cols += [c_V[:, k] + lam * dX[k] for k in free]
        init = None
        if warm is not None:
            assert warm[0].sum(0).min() == 1  # the masks partition the pixels
            init = warm[0].argmax(0)
        r = solve_mwc(np.stack(cols, 1), grid.edges, c_E + lam * dY, initial_labels=init,
                      local_search=local_search)
        new_cls = np.asarray(label_class)[r.node_labels]
        new_cut = r.node_labels[grid.edges[:, 0]] != r.node_labels[grid.edges[:, 1]]
    else:
        part = np.zeros(K, bool)
        part[list(things)] = True
        kw = {} if warm is None else dict(initial_labels=fwd_labels, initial_clusters=warm[1])
        r = solve_amwc(c_V + lam * dX.T, grid.edges, c_E + lam * dY, part, local_search=local_search, **kw)
        new_cls = r.node_labels
        new_cut = r.edge_labels.astype(bool)
    eye = np.eye(K)
    g_V = (eye[new_cls] - eye[fwd_labels]) / lam
    g_E = (new_cut.astype(np.float64) - fwd_cut) / lam
    return g_V, g_E


def _random_upstream(layer, sc, ec, seed, mask_grad=True, node_grad=True, edge_grad=True, gen=None):
    """Run forward_batched and backward a random linear loss; return (outputs, upstream grads)."""
    out = layer.forward_batched(sc, ec, generator=gen)
    rng = torch.Generator().manual_seed(seed)
    RP = torch.randn(out.masks.shape, generator=rng, dtype=torch.float64) * 0.01
    RX = torch.randn(out.node_one_hot.shape, generator=rng, dtype=torch.float64) * 0.01
    RY = [torch.randn(m.shape, generator=rng, dtype=torch.float64) * 0.01 for m in out.edge_label_maps]
    loss = out.masks.sum() * 0.0
    if mask_grad:
        loss = loss + (out.masks * RP).sum()
    if node_grad:
        loss = loss + (out.node_one_hot * RX).sum()
    if edge_grad:
        loss = loss + sum((m * r).sum() for m, r in zip(out.edge_label_maps, RY))
    loss.backward()
    return out, (RP if mask_grad else torch.zeros_like(RP)), (RX if node_grad else torch.zeros_like(RX)), [
        r if edge_grad else torch.zeros_like(r) for r in RY]


def _direct_batch(layer, sc, ec, out, RP, RX, RY, lambdas, warm=False):
    """Average of the direct estimates over ``lambdas[b]`` per image; returns (g_sem, g_edge maps)."""
    B, K, H, W = sc.shape
    N = H * W
    grid = layer.grid(H, W)
    valid = grid.valid_masks()
    g_sem = np.zeros((B, K, H, W))
    g_edges = [np.zeros((B,) + s) for s in grid.map_shapes]
    for b in range(B):
        sel = (out.mask_image_index == b).numpy()
        c_V = sc.detach()[b].permute(1, 2, 0).reshape(N, K).numpy()
        c_E = grid.maps_to_edge_values([e.detach()[b].numpy() for e in ec])
        fwd_cut = grid.maps_to_edge_values([m[b].detach().numpy() for m in out.edge_label_maps])
        dP = RP[torch.from_numpy(sel)].reshape(-1, N).numpy()
        dX = RX[b].reshape(K, N).numpy()
        dY = grid.maps_to_edge_values([r[b].numpy() for r in RY])
        acc_V, acc_E = np.zeros((N, K)), np.zeros(grid.num_edges)
        w = None
        if warm:
            w = (out.masks[torch.from_numpy(sel)].detach().reshape(-1, N).numpy() > 0,
                 out.instance_ids[b].reshape(-1).numpy())
        for lam in lambdas[b]:
            gV, gE = _direct_estimate(c_V, c_E, grid, out.node_labels[b].reshape(-1).numpy(), fwd_cut,
                                      out.mask_classes[torch.from_numpy(sel)].tolist(), dP, dX, dY, lam,
                                      layer.thing_classes, warm=w,
                                      local_search=layer.local_search or layer.backward_warm_start)
            acc_V += gV / len(lambdas[b])
            acc_E += gE / len(lambdas[b])
        g_sem[b] = acc_V.T.reshape(K, H, W)
        for d, m in enumerate(grid.edge_values_to_maps(acc_E)):
            assert not m[~valid[d]].any()
            g_edges[d][b] = m
    return g_sem, g_edges


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_single_fixed_lambda_reproduces_plain_vlastelica(seed, warm):
    """Cold: the authors' construction (each perturbed MWC solved from scratch); warm: the same
    with the solve started from the forward solution (backward_warm_start). float64 costs, so
    that the layer and the direct construction solve bit-identical instances."""
    sc, ec, _ = synthetic_costs([10 + seed])
    lam = 250.0
    layer = make_layer(num_samples=1, lambda_min=lam, lambda_max=lam, backward_warm_start=warm,
                       backward_float32=False)
    out, RP, RX, RY = _random_upstream(layer, sc, ec, seed)
    g_sem, g_edges = _direct_batch(layer, sc, ec, out, RP, RX, RY, [[lam]], warm=warm)
    assert np.abs(g_sem).sum() > 0 and sum(np.abs(g).sum() for g in g_edges) > 0
    np.testing.assert_allclose(sc.grad.numpy(), g_sem, rtol=0, atol=1e-12)
    for e, g in zip(ec, g_edges):
        np.testing.assert_allclose(e.grad.numpy(), g, rtol=0, atol=1e-12)


def test_average_over_lambdas_matches_direct_average():
    sc, ec, _ = synthetic_costs([20, 21])
    layer = make_layer(num_samples=3, lambda_min=20.0, lambda_max=2000.0, backward_warm_start=False,
                       backward_float32=False)
    out, RP, RX, RY = _random_upstream(layer, sc, ec, 3, gen=torch.Generator().manual_seed(42))
    # Documented draw: B * N uniforms from the generator in image-major order.
    u = torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(42)).numpy()
    lambdas = 20.0 + (2000.0 - 20.0) * u
    g_sem, g_edges = _direct_batch(layer, sc, ec, out, RP, RX, RY, lambdas)
    np.testing.assert_allclose(sc.grad.numpy(), g_sem, rtol=1e-12, atol=1e-12)
    for e, g in zip(ec, g_edges):
        np.testing.assert_allclose(e.grad.numpy(), g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("warm", [False, True])
def test_loss_on_node_and_edge_labels_only_perturbs_the_amwc(warm):
    sc, ec, _ = synthetic_costs([30])
    lam = 400.0
    layer = make_layer(num_samples=1, lambda_min=lam, lambda_max=lam, backward_warm_start=warm,
                       backward_float32=False)
    out, RP, RX, RY = _random_upstream(layer, sc, ec, 5, mask_grad=False)
    g_sem, g_edges = _direct_batch(layer, sc, ec, out, RP, RX, RY, [[lam]], warm=warm)
    assert np.abs(g_sem).sum() > 0
    np.testing.assert_allclose(sc.grad.numpy(), g_sem, rtol=0, atol=1e-12)
    for e, g in zip(ec, g_edges):
        np.testing.assert_allclose(e.grad.numpy(), g, rtol=0, atol=1e-12)


def test_zero_upstream_gradient_gives_zero_gradient():
    sc, ec, _ = synthetic_costs([4])
    out = make_layer()(sc, ec)[0]
    (out.masks * 0.0).sum().backward()
    assert torch.count_nonzero(sc.grad) == 0 and all(torch.count_nonzero(e.grad) == 0 for e in ec)


def test_seeded_backward_is_reproducible_and_seed_dependent():
    sc, ec, _ = synthetic_costs([6])
    layer = make_layer(num_samples=2, lambda_min=1.0, lambda_max=5000.0)

    def run(seed):
        zero_grads(sc, ec)
        out = layer(sc, ec, generator=torch.Generator().manual_seed(seed))[0]
        w = torch.linspace(-0.01, 0.01, out.masks.numel(), dtype=torch.float64).reshape(out.masks.shape)
        (out.masks * w).sum().backward()
        return grads_of(sc, ec)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert a.abs().sum() > 0 and not torch.equal(a, c)
    # The global RNG is used without a generator.
    torch.manual_seed(11)
    zero_grads(sc, ec)
    out = layer(sc, ec)[0]
    w = torch.linspace(-0.01, 0.01, out.masks.numel(), dtype=torch.float64).reshape(out.masks.shape)
    (out.masks * w).sum().backward()
    g1 = grads_of(sc, ec)
    torch.manual_seed(11)
    zero_grads(sc, ec)
    out = layer(sc, ec)[0]
    (out.masks * w).sum().backward()
    assert torch.equal(g1, grads_of(sc, ec))


def test_pixel_and_edge_weights_multiply_the_gradient():
    sc, ec, _ = synthetic_costs([8])
    B, K, H, W = sc.shape
    layer = make_layer(num_samples=2, lambda_min=500.0, lambda_max=500.0)
    grid = layer.grid(H, W)
    rng = torch.Generator().manual_seed(0)
    pw = torch.rand((B, H, W), generator=rng, dtype=torch.float64)
    pw[:, : H // 2] = 0.0
    ew = [torch.rand((B,) + s, generator=rng, dtype=torch.float64) for s in grid.map_shapes]
    ew[0][:, 0] = 0.0

    def run(pixel_weights, edge_weights):
        zero_grads(sc, ec)
        out = layer.forward_batched(sc, ec, pixel_weights, edge_weights)
        r = torch.randn(out.masks.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (out.masks * r * 0.01).sum().backward()
        return sc.grad.clone(), [e.grad.clone() for e in ec]

    g0_sem, g0_edges = run(None, None)
    g_sem, g_edges = run(pw, ew)
    assert g0_sem[:, :, : H // 2].abs().sum() > 0 and g0_edges[0][:, 0].abs().sum() > 0
    torch.testing.assert_close(g_sem, g0_sem * pw[:, None], rtol=0, atol=1e-15)
    assert torch.count_nonzero(g_sem[:, :, : H // 2]) == 0
    for g, g0, w, valid in zip(g_edges, g0_edges, ew, grid.valid_masks()):
        torch.testing.assert_close(g, g0 * w, rtol=0, atol=1e-15)
        assert torch.count_nonzero(g0[:, torch.from_numpy(~valid)]) == 0  # invalid positions
    assert torch.count_nonzero(g_edges[0][:, 0]) == 0


def test_gradient_flows_to_calibration_parameters():
    # Weak costs (class margin 1, edge margin 0.5) so that the solution has errors to correct.
    insts = [synthetic_instance(12, 16, 5, 2, [1, 3], seed=s, num_stuff_regions=3, num_things=3,
                                class_margin=1.0, edge_margin=0.5) for s in (0, 1)]
    K, H, W = 5, 12, 16
    logits = torch.tensor(np.stack([-i.node_costs.reshape(H, W, K).transpose(2, 0, 1) for i in insts]),
                          dtype=torch.float32, requires_grad=True)
    cut_logits = [torch.tensor(m, dtype=torch.float32) for m in
                  insts[0].grid.edge_values_to_maps(np.stack([-i.edge_costs for i in insts]))]
    calib = CostCalibration(2)
    with torch.no_grad():
        calib.edge_weight[1] = -0.7  # |a_d| handles a negative scale
    layer = AMWCLayer(K, [0, 1], [1, 3], lambda_min=1.0, lambda_max=5000.0)
    sem_costs, edge_costs = calib(logits, cut_logits)
    outs = layer(sem_costs, edge_costs, generator=torch.Generator().manual_seed(0))
    gt_masks, gt_classes = [], []
    for inst in insts:
        m, c = masks_from_ids(inst.semantic * LD + inst.instance, dtype=torch.bool)[:2]
        gt_masks.append(m)
        gt_classes.append(c)
    loss_fn = PanopticQualitySurrogate([0, 1], stuff_area=4, instance_area=4, ratio_eps=0.1)
    loss = loss_fn([o.masks for o in outs], [o.mask_classes for o in outs], gt_masks, gt_classes).loss
    loss.backward()
    assert calib.semantic_weight.grad.abs() > 0
    assert (calib.edge_weight.grad.abs() > 0).all() and (calib.edge_bias.grad.abs() > 0).all()
    assert logits.grad.abs().sum() > 0
    # Adding a constant to all class costs of a pixel does not change the AMWC: the per-pixel
    # one-hot differences sum to 0 over the classes, so the semantic offset gets no gradient
    # (up to rounding).
    assert calib.semantic_bias.grad.abs() <= 1e-6 * logits.grad.abs().sum()


def test_timing_is_recorded():
    sc, ec, _ = synthetic_costs([9])
    layer = make_layer()
    out = layer(sc, ec)[0]
    t = layer.last_timing
    assert set(t) == {"forward_solver_s", "forward_other_s", "backward_solver_s", "backward_other_s"}
    assert t["forward_solver_s"] > 0 and t["forward_other_s"] > 0
    assert t["backward_solver_s"] == 0.0 and t["backward_other_s"] == 0.0
    w = torch.linspace(-1, 1, out.masks.numel(), dtype=torch.float64).reshape(out.masks.shape)
    (out.masks * w).sum().backward()
    assert layer.last_timing["backward_solver_s"] > 0 and layer.last_timing["backward_other_s"] > 0


# ----------------------------------------------------------------------------- bad input
def _valid_inputs():
    sc, ec, _ = synthetic_costs([0], H=6, W=7, distances=(1, 2))
    return make_layer(distances=(1, 2)), sc.detach(), [e.detach() for e in ec]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda sc, ec: (sc[0], ec, {}), r"semantic_costs must be a floating point torch.Tensor \[B, K, H, W\], got torch.float64 \[6, 6, 7\]"),
        (lambda sc, ec: (sc.to(torch.int64), ec, {}), "semantic_costs must be a floating point torch.Tensor .* got torch.int64"),
        (lambda sc, ec: (sc.numpy(), ec, {}), "semantic_costs must be a floating point torch.Tensor .*got ndarray"),
        (lambda sc, ec: (sc[:, :5], ec, {}), r"K = num_classes = 6 .*got \[1, 5, 6, 7\]"),
        (lambda sc, ec: (sc[:, :, :0], [e[:, :, :0] for e in ec], {}), r"B, H, W >= 1, got \[1, 6, 0, 7\]"),
        (lambda sc, ec: (sc[:0], [e[:0] for e in ec], {}), r"B, H, W >= 1, got \[0, 6, 6, 7\]"),
        (lambda sc, ec: (sc, ec[:1], {}), r"edge_costs must be a list of 2 tensors .*one map per edge distance \[1, 2\], got 1 entries"),
        (lambda sc, ec: (sc, ec[0], {}), "edge_costs must be a list of 2 tensors .*got Tensor"),
        (lambda sc, ec: (sc, [ec[0][:, :, :-1], ec[1]], {}), r"edge_costs\[0\] \(edge distance 1\) must be .* got torch.float64"),
        (lambda sc, ec: (sc, [ec[0], ec[1].to(torch.int32)], {}), r"edge_costs\[1\] .* must be a floating point"),
        (lambda sc, ec: (sc, ec, {"pixel_weights": torch.ones(1, 6, 6, dtype=torch.float64)}),
         r"pixel_weights must be a floating point torch.Tensor \[B, H, W\] = \[1, 6, 7\], got torch.float64 \[1, 6, 6\]"),
        (lambda sc, ec: (sc, ec, {"pixel_weights": -torch.ones(1, 6, 7, dtype=torch.float64)}),
         "pixel_weights must be non-negative"),
        (lambda sc, ec: (sc, ec, {"edge_weights": [torch.ones_like(ec[0])]}), "edge_weights must be a list of 2 tensors"),
        (lambda sc, ec: (sc, ec, {"edge_weights": [torch.ones_like(ec[0]), torch.ones_like(ec[1])[:, :, 1:]]}),
         r"edge_weights\[1\] \(edge distance 2\) must be"),
        (lambda sc, ec: (sc, ec, {"generator": 3}), "generator must be None or a CPU torch.Generator, got 3"),
        (lambda sc, ec: (sc, ec, {"pad_fn": 3}), "pad_fn must be None or callable, got int"),
    ],
)
def test_bad_forward_input_raises_value_error(mutate, match):
    layer, sc, ec = _valid_inputs()
    sc2, ec2, kw = mutate(sc, ec)
    with pytest.raises(ValueError, match=match):
        layer(sc2, ec2, **kw)


@pytest.mark.parametrize("where", ["semantic_costs", "edge_costs", "pixel_weights", "edge_weights"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_raises_value_and_floating_point_error(where, value):
    """NaN / inf costs or weights (in training: a diverged model) are refused with NonFiniteError,
    both a ValueError and a FloatingPointError."""
    layer, sc, ec = _valid_inputs()
    kw = {"pixel_weights": torch.ones(1, 6, 7, dtype=torch.float64), "edge_weights": [torch.ones_like(e) for e in ec]}
    if where == "semantic_costs":
        sc = sc.index_fill(2, torch.tensor([1]), value)
    elif where == "edge_costs":
        ec = [ec[0], ec[1].index_fill(3, torch.tensor([0]), value)]
    elif where == "pixel_weights":
        kw[where] = kw[where].index_fill(1, torch.tensor([2]), value)
    else:
        kw[where] = [kw[where][0].index_fill(2, torch.tensor([0]), value), kw[where][1]]
    with pytest.raises(NonFiniteError, match=where + r".* contains NaN or inf") as info:
        layer(sc, ec, **kw)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FloatingPointError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes must be >= 1, got 0"),
        ({"num_classes": 6.0}, "num_classes must be an integer, got 6.0"),
        ({"thing_classes": [6]}, r"thing_classes \[6\] must lie in \[0, 6\)"),
        ({"thing_classes": [-1]}, r"thing_classes\[0\] must be >= 0"),
        ({"thing_classes": [True]}, r"thing_classes\[0\] must be an integer, got True"),
        ({"edge_distances": [0]}, r"edge_distances\[0\] must be >= 1"),
        ({"edge_distances": [4.0]}, r"edge_distances\[0\] must be an integer, got 4.0"),
        ({"edge_sampling_intervals": [1]}, "edge_sampling_intervals must have one entry per edge distance"),
        ({"num_samples": 0}, "num_samples must be >= 1"),
        ({"lambda_min": 0.0}, "lambda_min must be >= 1e-300"),
        ({"lambda_min": 1e-310, "lambda_max": 1e-310}, "lambda_min must be >= 1e-300"),
        ({"lambda_min": 10.0, "lambda_max": 5.0}, "lambda_max must be >= 10.0"),
        ({"lambda_max": float("inf")}, "lambda_max must be finite"),
        ({"lambda_max": "5"}, "lambda_max must be a real number"),
        ({"num_threads": -1}, "num_threads must be >= 0"),
        ({"num_threads": 2**31}, "num_threads must be <= 2147483647"),
        ({"num_threads": 2.0}, "num_threads must be an integer"),
        ({"min_thing_cluster_size": 0}, "min_thing_cluster_size must be >= 1"),
        ({"local_search": 1}, "local_search must be a bool, got 1"),
        ({"backward_warm_start": None}, "backward_warm_start must be a bool"),
        ({"backward_float32": "yes"}, "backward_float32 must be a bool"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(kwargs, match):
    args = dict(num_classes=6, thing_classes=[0, 1], edge_distances=[1, 2])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        AMWCLayer(**args)


def test_thing_classes_may_be_any_collection_of_ids():
    for things in ([2, 0], (0, 2), {0, 2}, range(0, 3, 2), np.array([2, 0]), torch.tensor([0, 2, 2])):
        assert AMWCLayer(4, things, [1]).thing_classes == (0, 2)


def test_half_precision_incoming_gradients_are_read_in_float32():
    """bfloat16 / float16 costs: the forward solves them, and the backward reads their incoming
    gradients (which NumPy cannot hold as bfloat16) in float32; the gradients come back in the
    costs' dtype and equal those of the same costs in float32 up to that dtype's rounding."""
    sc, ec, _ = synthetic_costs([1], H=6, W=7, distances=(1, 2))
    grads = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        s = sc.detach().to(dtype).requires_grad_()
        e = [m.detach().to(dtype).requires_grad_() for m in ec]
        out = make_layer(distances=(1, 2))(s, e, generator=torch.Generator().manual_seed(0))[0]
        (out.masks * torch.linspace(-1, 1, out.masks.numel()).reshape(out.masks.shape).to(dtype)).sum().backward()
        assert s.grad.dtype == dtype and all(m.grad.dtype == dtype for m in e)
        grads[dtype] = s.grad.float()
    assert grads[torch.float32].abs().sum() > 0
    for dtype in (torch.bfloat16, torch.float16):
        torch.testing.assert_close(grads[dtype], grads[torch.float32], rtol=2e-2, atol=2e-2)


def test_backward_errors_name_the_perturbed_costs():
    """float64 costs beyond the float32 range solve in the forward (float64) but cannot be
    perturbed in float32 (``backward_float32``): the error says where it comes from."""
    sc, ec, _ = synthetic_costs([1], H=6, W=7, distances=(1, 2))
    s = (sc.detach() * 1e39).requires_grad_()
    out = make_layer(distances=(1, 2))(s, [m.detach() for m in ec])[0]
    with pytest.raises(ValueError, match=r"AMWCFunction.backward: the perturbed costs .*backward_float32=True.*finite"):
        out.masks.sum().backward()


def test_nan_incoming_gradient_raises_non_finite_error():
    sc, ec, _ = synthetic_costs([1], H=6, W=7, distances=(1, 2))
    out = make_layer(distances=(1, 2))(sc, ec)[0]
    with pytest.raises(NonFiniteError, match="incoming gradient of the masks contains NaN or inf"):
        (out.masks * float("nan")).sum().backward()


# ----------------------------------------------------------------------------- the estimator trains
K_TRAIN, STUFF_TRAIN, THINGS_TRAIN, D_TRAIN = 4, (0, 1), (2, 3), (1, 2)


def training_case(kind: str, seed: int):
    """A small panoptic ground truth and leaf costs whose AMWC solution has one error of ``kind``.

    Grid 12..16 x 12..16; stuff classes 0 (left) and 1 (right); one thing configuration of class 2
    or 3. Costs: the predicted class is preferred by 2.0 (logit noise 0.3), edges cost +-1.0
    (noise 0.2) with the sign of the predicted partition. The error comes from weak evidence, as
    from a network: "merged" two adjacent instances joined by weak edges (+0.4), "split" one
    instance cut by weak edges (-0.4), "wrong_class" an instance whose (wrong) class is preferred
    by only 1.0.
    """
    rng = np.random.default_rng(seed)
    H, W = (int(v) for v in rng.integers(12, 17, 2))
    sem = np.zeros((H, W), np.int64)
    sem[:, int(rng.integers(W // 3, 2 * W // 3)):] = 1
    inst = np.zeros((H, W), np.int64)
    c = int(rng.choice(THINGS_TRAIN))
    if kind == "merged":
        w1 = int(rng.integers(3, 5))
        hh, ww = int(rng.integers(4, 7)), w1 + int(rng.integers(3, 5))
    elif kind == "split":
        hh, ww = int(rng.integers(4, 7)), int(rng.integers(5, 8))
    else:
        hh, ww = int(rng.integers(3, 6)), int(rng.integers(3, 6))
    transpose = bool(rng.random() < 0.5)
    if transpose:
        hh, ww = ww, hh
    y0, x0 = int(rng.integers(1, H - hh)), int(rng.integers(1, W - ww))
    box = (slice(y0, y0 + hh), slice(x0, x0 + ww))
    sem[box] = c
    inst[box] = 1
    pred_inst = inst.copy()
    if kind == "merged":  # ground truth: two instances; prediction: one
        if transpose:
            inst[y0 + w1:y0 + hh, x0:x0 + ww] = 2
        else:
            inst[y0:y0 + hh, x0 + w1:x0 + ww] = 2
    elif kind == "split":  # ground truth: one instance; prediction: two
        if transpose:
            pred_inst[y0 + int(rng.integers(2, hh - 1)):y0 + hh, x0:x0 + ww] = 2
        else:
            pred_inst[y0:y0 + hh, x0 + int(rng.integers(2, ww - 1)):x0 + ww] = 2
    pred_sem = sem.copy()
    margin = np.full((H, W), 2.0)
    if kind == "wrong_class":
        pred_sem[inst == 1] = [k for k in THINGS_TRAIN if k != c][0]
        margin[inst == 1] = 1.0
    logits = rng.normal(0.0, 0.3, (K_TRAIN, H, W))
    logits[pred_sem, np.arange(H)[:, None], np.arange(W)[None]] += margin
    grid = GridGraph(H, W, D_TRAIN)

    def cut_of(s, i):
        key = (s * 100 + i).reshape(-1)
        return key[grid.edges[:, 0]] != key[grid.edges[:, 1]]

    pred_cut, gt_cut = cut_of(pred_sem, pred_inst), cut_of(sem, inst)
    edge_costs = np.where(pred_cut, -1.0, 1.0) + rng.normal(0.0, 0.2, grid.num_edges)
    wrong = pred_cut != gt_cut
    edge_costs[wrong] = np.where(pred_cut[wrong], -0.4, 0.4) + rng.normal(0.0, 0.1, int(wrong.sum()))
    sc = torch.tensor(-logits[None], dtype=torch.float32, requires_grad=True)
    ec = [torch.tensor(m[None], dtype=torch.float32, requires_grad=True) for m in grid.edge_values_to_maps(edge_costs)]
    return sc, ec, sem * LD + inst


def steps_to_ground_truth(kind: str, seed: int, max_steps: int = 50):
    """Adam on the costs (lr 0.1) through the layer with the PQ surrogate; the step at which the
    exact PQ first reaches 1.0, or None."""
    sc, ec, gt_id = training_case(kind, seed)
    layer = AMWCLayer(K_TRAIN, THINGS_TRAIN, D_TRAIN, num_samples=5, lambda_min=1.0, lambda_max=5000.0)
    loss_fn = PanopticQualitySurrogate(THINGS_TRAIN, stuff_area=4, instance_area=4, ratio_eps=0.1)
    gt_masks, gt_classes = masks_from_ids(gt_id, dtype=torch.bool)[:2]
    opt = torch.optim.Adam([sc] + ec, lr=0.1)
    gen = torch.Generator().manual_seed(seed)
    for step in range(max_steps + 1):
        out = layer(sc, ec, generator=gen)[0]
        pq = panoptic_quality(pred_ids(out, THINGS_TRAIN), gt_id, label_divisor=LD,
                              thing_classes=THINGS_TRAIN)["All"]["pq"]
        if step == 0:
            assert pq < 1.0, f"{kind} case {seed} is solved before training"
        if pq == 1.0:
            return step
        if step == max_steps:
            return None
        loss = loss_fn([out.masks], [out.mask_classes], [gt_masks], [gt_classes]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_estimated_gradient_drives_the_solution_to_the_ground_truth():
    """Per kind, 20 seeded cases; PQ must reach 1.0 within 50 Adam steps in >= 90 % of them.

    "merged"/"split" exercise the edge-cost gradient (the MWC relabels one part, which cuts or
    joins the wrong boundary); "wrong_class" exercises the node-cost gradient and its sign (with a
    sign error the costs drift to the stuff classes and the case fails).
    """
    results = {kind: [steps_to_ground_truth(kind, s) for s in range(20)]
               for kind in ("merged", "split", "wrong_class")}
    summary = {k: f"{sum(r is not None for r in v)}/20 solved, steps {v}" for k, v in results.items()}
    for kind, steps in results.items():
        assert sum(s is not None for s in steps) >= 18, f"{kind}: {summary}"


# ----------------------------------------------------------------------------- variance
def test_averaging_over_lambdas_lowers_the_variance():
    sc, ec, gt_id = training_case("merged", 3)
    gt_masks, gt_classes = masks_from_ids(gt_id, dtype=torch.bool)[:2]
    loss_fn = PanopticQualitySurrogate(THINGS_TRAIN, stuff_area=4, instance_area=4, ratio_eps=0.1)

    def estimates(n):
        layer = AMWCLayer(K_TRAIN, THINGS_TRAIN, D_TRAIN, num_samples=n, lambda_min=1.0, lambda_max=5000.0)
        out = []
        for seed in range(30):
            zero_grads(sc, ec)
            o = layer(sc, ec, generator=torch.Generator().manual_seed(1000 * n + seed))[0]
            loss_fn([o.masks], [o.mask_classes], [gt_masks], [gt_classes]).loss.backward()
            out.append(grads_of(sc, ec).double())
        return torch.stack(out)

    g1, g5 = estimates(1), estimates(5)
    v1, v5 = g1.var(0).sum().item(), g5.var(0).sum().item()  # trace of the covariance
    assert v1 > 0
    # Independent draws would give v5 = v1 / 5; allow a wide margin for 30 seeds.
    assert v5 < 0.6 * v1, (v1, v5)
    # Both estimate the same expectation: the means agree within a few standard errors.
    diff = (g1.mean(0) - g5.mean(0)).pow(2).sum().item()
    assert diff < 9 * (v1 + v5) / 30, (diff, v1, v5)


# ----------------------------------------------------------------------------- missed ground truth
def _planted_merge(margin=10.0):
    """Two touching ground-truth instances (A: 24 px, B: 16 px) of thing class 1 on stuff class 0,
    predicted as ONE instance: the semantic costs prefer the right class everywhere by
    ``margin``, every edge inside the thing region (also across the A/B boundary) favours
    joining (+1), every other edge cutting (-1)."""
    H, W, D = 8, 12, [1, 2]
    gt_ids = np.zeros((H, W), np.int64)
    gt_ids[2:6, 1:7] = 1
    gt_ids[2:6, 7:11] = 2
    sem = (gt_ids > 0).astype(np.int64)
    logits = np.zeros((2, H, W))
    logits[sem, np.arange(H)[:, None], np.arange(W)[None]] = margin
    grid = GridGraph(H, W, D)
    key = sem.reshape(-1)
    edge_costs = np.where(key[grid.edges[:, 0]] == key[grid.edges[:, 1]], 1.0, -1.0)
    sc = torch.tensor(-logits[None], dtype=torch.float64, requires_grad=True)
    ec = [torch.tensor(m[None], dtype=torch.float64, requires_grad=True)
          for m in grid.edge_values_to_maps(edge_costs)]
    gt_masks = torch.from_numpy(np.stack([gt_ids == k for k in range(3)]))
    gt_classes = torch.tensor([0, 1, 1])
    return sc, ec, D, gt_ids + 1000 * sem, gt_masks, gt_classes


@pytest.mark.parametrize("pad", [False, True])
def test_planted_merge_is_split_by_one_step_only_with_padded_ground_truth(pad):
    """COPS pads one MWC label per unmatched ground-truth segment: the pixels
    of the missed instance B move to that label (same class), so the estimate cuts the A/B
    boundary and one gradient step splits the merge. Without it (only the predicted segment and
    the classes as labels) B's pixels could only change class, which the semantic margin
    forbids: zero gradient, the merge stays."""
    sc, ec, D, gt_pan, gt_masks, gt_classes = _planted_merge()
    lam = 50.0
    layer = AMWCLayer(2, [1], D, num_samples=3, lambda_min=lam, lambda_max=2 * lam)
    loss_fn = PanopticQualitySurrogate([1], stuff_area=4, instance_area=4)

    gt = ([gt_masks], [gt_classes])
    padding = loss_fn.padding(*gt)
    out = layer(sc, ec, generator=torch.Generator().manual_seed(0), pad_fn=padding if pad else None)[0]
    assert panoptic_quality(pred_ids(out, [1]), gt_pan, label_divisor=LD, thing_classes=[1])["All"]["pq"] < 1.0
    assert out.mask_classes.tolist() == ([0, 1, 1] if pad else [0, 1]) and out.num_padded == int(pad)
    if pad:
        # the merged segment is matched to A; B is missed
        assert padding.images[0].pairs == [(0, 0), (1, 1)] and padding.images[0].unmatched == [2]
        assert out.masks[2:].sum() == 0
    res = loss_fn([out.masks], [out.mask_classes], *gt, padding=padding if pad else None)
    assert res.matches == ([[(0, 0), (1, 1), (2, 2)]] if pad else [[(0, 0), (1, 1)]])
    (10.0 * res.loss).backward()
    grad_norm = sc.grad.abs().sum() + sum(e.grad.abs().sum() for e in ec)
    with torch.no_grad():  # one step of gradient descent on the costs
        lr = 2 * lam
        sc2 = sc - lr * sc.grad
        ec2 = [e - lr * e.grad for e in ec]
    after = layer(sc2, ec2)[0]
    pq = panoptic_quality(pred_ids(after, [1]), gt_pan, label_divisor=LD, thing_classes=[1])["All"]["pq"]
    if pad:
        # only edge costs move (no pixel changes class): the A/B boundary edges
        assert sc.grad.abs().sum() == 0 and grad_norm > 0
        assert pq == 1.0
    else:
        assert grad_norm == 0 and pq < 1.0


def test_pad_fn_receives_masks_and_its_classes_are_validated():
    sc, ec, D, _, gt_masks, gt_classes = _planted_merge()
    layer = AMWCLayer(2, [1], D)
    seen = []

    def pad_fn(b, masks, classes):
        seen.append((b, masks.shape, classes.tolist(), masks.requires_grad))
        return torch.tensor([1, 0])

    out = layer.forward_batched(torch.cat([sc, sc]).detach(), [torch.cat([e, e]).detach() for e in ec], pad_fn=pad_fn)
    assert seen == [(0, (2, 8, 12), [0, 1], False), (1, (2, 8, 12), [0, 1], False)]
    assert out.mask_classes.tolist() == [0, 1, 1, 0] * 2
    assert out.mask_is_padding.tolist() == [False, False, True, True] * 2
    assert out.masks[out.mask_is_padding].sum() == 0
    for bad, match in ((lambda b, m, c: [2], r"pad_fn returned class ids \[2\] for image 0, not all in \[0, 2\)"),
                       (lambda b, m, c: 1, "the class ids pad_fn returned for image 0 must be a sequence"),
                       (lambda b, m, c: [0.5], r"the class ids pad_fn returned for image 0\[0\] must be an integer"),
                       (lambda b, m, c: [-1], r"the class ids pad_fn returned for image 0\[0\] must be >= 0")):
        with pytest.raises(ValueError, match=match):
            layer(sc.detach(), [e.detach() for e in ec], pad_fn=bad)


def test_small_thing_clusters_get_no_mask():
    """Thing clusters under min_thing_cluster_size grid pixels get no mask (the COPS code's
    IGNORE_INSTANCE_SIZE_AMC // 4 = 3); stuff segments are kept whatever their size."""
    H, W = 6, 8
    logits = np.zeros((3, H, W))
    lab = np.zeros((H, W), np.int64)
    lab[0:3, 0:3] = 1   # thing, 9 px
    lab[5, 6:8] = 1     # thing, 2 px
    lab[5, 0] = 2       # stuff class 2, 1 px
    logits[lab, np.arange(H)[:, None], np.arange(W)[None]] = 5.0
    grid = GridGraph(H, W, [1])
    key = lab.reshape(-1)
    edge_costs = np.where(key[grid.edges[:, 0]] == key[grid.edges[:, 1]], 1.0, -1.0)
    sc = torch.tensor(-logits[None], requires_grad=True)
    ec = [torch.tensor(m[None], requires_grad=True) for m in grid.edge_values_to_maps(edge_costs)]
    for size, n_things in ((1, 2), (3, 1), (10, 0)):
        out = AMWCLayer(3, [1], [1], min_thing_cluster_size=size)(sc, ec)[0]
        assert out.mask_classes.tolist() == [0, 2] + [1] * n_things
        assert (out.node_labels == torch.from_numpy(lab)).all()  # the AMWC solution itself is unchanged
        covered = out.masks.sum(0)
        assert covered.max() == 1 and int((covered == 0).sum()) == {1: 0, 3: 2, 10: 11}[size]
    # backward runs; the small cluster's class keeps a plain MWC label (no segment of class 1 left)
    out.masks[0].sum().backward()
    assert torch.isfinite(sc.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_planted_merge_split_with_padding_on_cuda_matches_cpu():
    """The padded-label path (the surrogate's padding as pad_fn) with costs on the GPU gives the CPU's
    masks and gradients."""
    grads = []
    for device in ("cpu", "cuda"):
        sc, ec, D, _, gt_masks, gt_classes = _planted_merge()
        sc = sc.detach().to(device).requires_grad_()
        ec = [e.detach().to(device).requires_grad_() for e in ec]
        gt_masks, gt_classes = gt_masks.to(device), gt_classes.to(device)
        layer = AMWCLayer(2, [1], D, num_samples=3, lambda_min=50.0, lambda_max=100.0)
        loss_fn = PanopticQualitySurrogate([1], stuff_area=4, instance_area=4)
        gt = ([gt_masks], [gt_classes])
        padding = loss_fn.padding(*gt)
        out = layer(sc, ec, generator=torch.Generator().manual_seed(0), pad_fn=padding)[0]
        assert out.masks.device.type == device and out.num_padded == 1
        res = loss_fn([out.masks], [out.mask_classes], *gt, padding=padding)
        res.loss.backward()
        grads.append([sc.grad.cpu()] + [e.grad.cpu() for e in ec])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- backward warm start
def test_backward_warm_start_and_float32_switches_work_both_ways(monkeypatch):
    """backward_warm_start / backward_float32 reach the solver: warm solves get the forward
    solution as initial labels (5th entry of the native tuple), float32 solves float32 costs."""
    import detectron2_cops.layers.amwc_layer as amwc_layer

    seen, searched = [], []
    real = amwc_layer._solve_batch

    def spy(instances, local_search, num_threads):
        seen.append([(len(t) > 4 and t[4] is not None, t[0].dtype) for t in instances])
        searched.append(local_search)
        return real(instances, local_search, num_threads)

    monkeypatch.setattr(amwc_layer, "_solve_batch", spy)
    sc, ec, _ = synthetic_costs([3])
    for warm in (False, True):
        for f32 in (False, True):
            seen.clear()
            layer = make_layer(num_samples=2, backward_warm_start=warm, backward_float32=f32)
            assert f"backward_warm_start={warm}, backward_float32={f32}" in repr(layer)
            zero_grads(sc, ec)
            _random_upstream(layer, sc, ec, 0)
            forward, backward = seen
            assert forward == [(False, np.float64)]
            assert backward == [(warm, np.float32 if f32 else np.float64)] * 2
    # the default is the authors' (cold, no local search) + float32; with local_search=False a
    # warm-started layer still searches locally, forward and backward (its forward solution must
    # be a local-search fixpoint), a cold one never
    layer = make_layer()
    assert not layer.backward_warm_start and not layer.local_search and layer.backward_float32
    for warm in (True, False):
        seen.clear()
        searched.clear()
        zero_grads(sc, ec)
        _random_upstream(make_layer(num_samples=1, local_search=False, backward_warm_start=warm), sc, ec, 0)
        assert seen[1] == [(warm, np.float32)]
        assert searched == [warm, warm]


def test_warm_and_cold_gradients_agree_in_direction():
    """Cosine similarity of the warm-started and the cold (COPS) estimates, N = 5, same lambdas.

    Measured: 1.000 on all 30 PQ-surrogate training cases below (10 seeds of each
    kind: both give the same estimate); 0.80-0.88 (mean 0.85) with a random dense upstream
    gradient on 24 x 32 noisy synthetic instances, seeds 40..47, where the cold solves also
    differ from the forward solution where the perturbation is tiny (GAEC from singletons on a
    different problem) and the warm ones do not. Thresholds: 0.99 and 0.7."""
    loss_fn = PanopticQualitySurrogate(THINGS_TRAIN, stuff_area=4, instance_area=4, ratio_eps=0.1)
    for kind in ("merged", "split", "wrong_class"):
        for seed in range(3):
            sc, ec, gt_id = training_case(kind, seed)
            gt_masks, gt_classes = masks_from_ids(gt_id, dtype=torch.bool)[:2]
            g = []
            for warm in (False, True):
                layer = AMWCLayer(K_TRAIN, THINGS_TRAIN, D_TRAIN, num_samples=5, backward_warm_start=warm)
                zero_grads(sc, ec)
                o = layer(sc, ec, generator=torch.Generator().manual_seed(seed))[0]
                loss_fn([o.masks], [o.mask_classes], [gt_masks], [gt_classes]).loss.backward()
                g.append(grads_of(sc, ec).double())
            assert g[0].norm() > 0
            cos = float(g[0] @ g[1] / (g[0].norm() * g[1].norm()))
            assert cos > 0.99, (kind, seed, cos)
    for seed in range(4):
        sc, ec, _ = synthetic_costs([40 + seed], H=24, W=32)
        g = []
        for warm in (False, True):
            zero_grads(sc, ec)
            layer = make_layer(num_samples=5, backward_warm_start=warm)
            _random_upstream(layer, sc, ec, seed, gen=torch.Generator().manual_seed(seed))
            g.append(grads_of(sc, ec).double())
        cos = float(g[0] @ g[1] / (g[0].norm() * g[1].norm()))
        assert cos > 0.7, (seed, cos)


def test_backward_workspace_hands_out_disjoint_views_and_grows():
    """The backward's scratch buffer: arrays of one pass never overlap; a pass that did not fit
    gets fresh arrays and the next pass fits in the grown buffer."""
    from detectron2_cops.layers.amwc_layer import _Workspace

    ws = _Workspace()
    ws.reset()
    a, b = ws.empty((100, 7), np.float32), ws.empty((33,), np.float64)
    assert a.shape == (100, 7) and a.dtype == np.float32 and b.shape == (33,) and b.dtype == np.float64
    assert not np.shares_memory(a, ws.buf) and not np.shares_memory(b, ws.buf)  # did not fit: fresh
    ws.reset()
    assert ws.buf.size >= a.nbytes + b.nbytes
    a, b, c = ws.empty((100, 7), np.float32), ws.empty((33,), np.float64), ws.empty((5, 5), np.float32)
    assert np.shares_memory(a, ws.buf) and np.shares_memory(b, ws.buf)
    assert not np.shares_memory(a, b)
    assert (a.ctypes.data - ws.buf.ctypes.data) % 64 == (b.ctypes.data - ws.buf.ctypes.data) % 64 == 0
    assert b.ctypes.data % b.dtype.itemsize == 0
    a.fill(1.0)
    b.fill(2.0)
    assert (a == 1.0).all() and (b == 2.0).all()
    assert c.shape == (5, 5) and not np.shares_memory(c, ws.buf)  # beyond the last pass's total


@pytest.mark.parametrize("S", [1, 5, 8, 15, 16])
def test_gradient_sums_equal_per_sample_scatters_to_the_bit(S):
    """The backward's sums over the perturbed solutions (node classes: few nodes change after a
    warm start; edge labels: looked up by their pattern for S <= 15, per-sample passes above)
    equal the plain per-sample accumulation to the bit, including nodes that change in some
    samples only and edges cut in some samples only."""
    from detectron2_cops.layers.amwc_layer import _accumulate_edge_gradient, _accumulate_node_gradient

    rng = np.random.default_rng(S)
    N, K, E = 500, 7, 900
    inv = 1.0 / rng.uniform(1.0, 5000.0, S)
    total = inv.sum()
    fwd = rng.integers(0, K, N)
    classes = []
    for _ in range(S):
        c = fwd.copy()
        flip = rng.random(N) < 0.1
        c[flip] = rng.integers(0, K, int(flip.sum()))
        classes.append(c)
    row_start = np.arange(N) * K
    want = np.zeros(N * K)
    for c, w in zip(classes, inv):
        want[row_start + c] += w
    want[row_start + fwd] -= total
    got = np.zeros(N * K)
    _accumulate_node_gradient(got, row_start, fwd, classes, inv, total)
    assert np.array_equal(got, want)
    assert (got != 0).any() and (got == 0).any()

    fwd_e = (rng.random(E) < 0.4).astype(np.uint8)
    labels = [np.where(rng.random(E) < 0.2, 1 - fwd_e, fwd_e).astype(np.uint8) for _ in range(S)]
    want_e = np.zeros(E)
    for y, w in zip(labels, inv):
        want_e += y * w
    want_e -= fwd_e * total
    got_e = np.zeros(E)
    _accumulate_edge_gradient(got_e, fwd_e, labels, inv, total)
    assert np.array_equal(got_e, want_e)
    assert len(np.unique(got_e)) >= min(S + 2, 6)  # 0, +-1 / lambda_i and their partial sums
