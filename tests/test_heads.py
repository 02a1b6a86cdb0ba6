"""Tests of the COPS semantic and affinity heads, the paper YAML configs and train_net's optimizer."""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY  # noqa: E402

from detectron2_cops.config import add_cops_config  # noqa: E402
from detectron2_cops.modeling.affinity_head import (  # noqa: E402
    AFFINITY_HEAD_REGISTRY,
    AffinityHead,
    build_affinity_head,
    centered_difference,
)
from detectron2_cops.modeling.sem_seg_head import COPSSemSegHead  # noqa: E402
from detectron2_cops.solvers.grid import GridGraph, edge_offsets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIRS = [
    REPO / "configs" / "Cityscapes-PanopticSegmentation",
    REPO / "configs" / "COCO-PanopticSegmentation",
]
ALL_DATASET_CONFIGS = sorted(p for d in CONFIG_DIRS for p in d.glob("*.yaml"))
# The paper's settings; the *_512x256_* configs are CPU-scale versions (R-18, lengths / 4).
PAPER_CONFIGS = [p for p in ALL_DATASET_CONFIGS if "512x256" not in p.name]
CPU_SCALE_CONFIGS = [p for p in ALL_DATASET_CONFIGS if "512x256" in p.name and p.name.startswith("cops_")]

NUM_CLASSES = 5
# Image 72x100 -> stride-4 grid 18x25: not a multiple of the distances; d = 32 is larger than the
# grid; odd d = 3 has lo = 1, hi = 2.
IMAGE_HW = (72, 100)
GRID_HW = (18, 25)
DISTANCES = [1, 2, 3, 4, 16, 32]
INTERVALS = [1, 2, 1, 3, 2, 1]
INPUT_SHAPE = {
    "res2": ShapeSpec(channels=8, stride=4),
    "res3": ShapeSpec(channels=8, stride=8),
    "res5": ShapeSpec(channels=16, stride=16),
}


def small_cfg(norm="BN", distances=DISTANCES, intervals=INTERVALS, dsconv=False, head_dsconv=False):
    cfg = get_cfg()
    add_cops_config(cfg)
    for head in (cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.AFFINITY_HEAD):
        head.IN_FEATURES = ["res2", "res3", "res5"]
        head.PROJECT_FEATURES = ["res2", "res3"]
        head.PROJECT_CHANNELS = [4, 8]
        head.ASPP_CHANNELS = 16
        head.CONVS_DIM = 16
        head.HEAD_CHANNELS = 16
        head.NORM = norm
        head.USE_DEPTHWISE_SEPARABLE_CONV = dsconv
    cfg.MODEL.SEM_SEG_HEAD.HEAD_USE_DEPTHWISE_SEPARABLE_CONV = head_dsconv
    cfg.MODEL.SEM_SEG_HEAD.NAME = "COPSSemSegHead"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES = list(distances)
    cfg.MODEL.AFFINITY_HEAD.EDGE_SAMPLING_INTERVALS = list(intervals)
    cfg.INPUT.CROP.ENABLED = False
    return cfg


def features(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = GRID_HW
    return {
        "res2": torch.randn(batch, 8, h, w, generator=g),
        "res3": torch.randn(batch, 8, math.ceil(h / 2), math.ceil(w / 2), generator=g),
        "res5": torch.randn(batch, 16, math.ceil(h / 4), math.ceil(w / 4), generator=g),
    }


def affinity_targets(head, logits, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets, weights = [], []
    gg = GridGraph(*GRID_HW, head.edge_distances, head.edge_sampling_intervals)
    for x, valid in zip(logits, gg.valid_masks()):
        targets.append(torch.randint(0, 2, x.shape, generator=g).float())
        w = torch.rand(x.shape, generator=g) + 0.5
        w = w * torch.from_numpy(valid).float()  # invalid map positions weigh 0
        weights.append(w)
    return targets, weights


# ---------------------------------------------------------------------------- semantic head
@pytest.mark.parametrize(
    "norm,dsconv,head_dsconv", [("BN", True, False), ("BN", True, True), ("GN", False, False), ("", False, False)]
)
def test_sem_seg_head_shapes_and_registry(norm, dsconv, head_dsconv):
    torch.manual_seed(0)
    cfg = small_cfg(norm=norm, dsconv=dsconv, head_dsconv=head_dsconv)
    if norm == "GN":  # Detectron2's GN uses 32 groups
        sem = cfg.MODEL.SEM_SEG_HEAD
        sem.ASPP_CHANNELS = sem.CONVS_DIM = sem.HEAD_CHANNELS = 32
        sem.PROJECT_CHANNELS = [32, 32]
    head = SEM_SEG_HEADS_REGISTRY.get("COPSSemSegHead")(cfg, INPUT_SHAPE)
    assert isinstance(head, COPSSemSegHead)
    logits, losses = head(features())
    assert logits.shape == (2, NUM_CLASSES) + GRID_HW
    assert logits.dtype == torch.float32
    assert losses == {}
    # The extra head has its own switch: USE_DEPTHWISE_SEPARABLE_CONV only changes ASPP/decoder.
    names = {n for n, _ in head.named_parameters()}
    if head_dsconv:
        assert "head.depthwise.weight" in names and "head.0.weight" not in names
    else:
        assert {"head.0.weight", "head.1.weight"} <= names and "head.depthwise.weight" not in names
    assert any("depthwise" in n for n in names if n.startswith("decoder")) == dsconv


@pytest.mark.parametrize("loss_type", ["hard_pixel_mining", "cross_entropy"])
def test_sem_seg_head_loss_and_gradients(loss_type):
    torch.manual_seed(0)
    cfg = small_cfg()
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE = loss_type
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 2.0
    head = COPSSemSegHead(cfg, INPUT_SHAPE)
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, NUM_CLASSES, (2,) + IMAGE_HW, generator=g)
    targets[0, :10] = 255  # ignored
    weights = torch.rand((2,) + IMAGE_HW, generator=g) + 0.5
    logits, losses = head(features(), targets, weights)
    assert set(losses) == {"loss_sem_seg"}
    loss = losses["loss_sem_seg"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name

    # The loss is the one documented: upsample, per-pixel CE, weights, (top-k), times weight.
    up = torch.nn.functional.interpolate(logits.detach(), size=IMAGE_HW, mode="bilinear", align_corners=False)
    ce = torch.nn.functional.cross_entropy(up, targets, ignore_index=255, reduction="none") * weights
    if loss_type == "cross_entropy":
        expected = ce.sum() / (targets != 255).sum()
    else:
        flat = ce.flatten()
        expected = torch.topk(flat, int(0.2 * flat.numel()))[0].mean()
    assert torch.allclose(loss.detach(), 2.0 * expected, rtol=1e-5)


def test_sem_seg_head_zero_weight():
    cfg = small_cfg()
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 0.0
    head = COPSSemSegHead(cfg, INPUT_SHAPE)
    logits, losses = head(features(), torch.zeros((2,) + IMAGE_HW, dtype=torch.long))
    assert losses == {}


@pytest.mark.parametrize("key,value,match", [
    ("IN_FEATURES", ["res2", "res3", "res4"], r"SEM_SEG_HEAD.IN_FEATURES must name features the backbone produces"),
    ("PROJECT_FEATURES", ["res2"], r"SEM_SEG_HEAD.PROJECT_FEATURES must be all IN_FEATURES except the coarsest"),
    ("LOSS_TOP_K", 0.0, r"SEM_SEG_HEAD.LOSS_TOP_K must be > 0"),
    ("LOSS_TOP_K", 1.5, r"SEM_SEG_HEAD.LOSS_TOP_K must be in \(0, 1\]"),
    ("LOSS_WEIGHT", float("nan"), r"SEM_SEG_HEAD.LOSS_WEIGHT must be finite"),
    ("HEAD_CHANNELS", 16.0, r"SEM_SEG_HEAD.HEAD_CHANNELS must be an integer, got 16.0"),
    ("NUM_CLASSES", 0, r"SEM_SEG_HEAD.NUM_CLASSES must be >= 1"),
    ("LOSS_TYPE", "focal", r"SEM_SEG_HEAD.LOSS_TYPE must be one of"),
])
def test_head_config_values_are_checked(key, value, match):
    """The config is where the heads' values enter: a bad one fails there, with the key named
    (the keys both heads share are checked by one function, deeplab_head_config)."""
    cfg = small_cfg()
    cfg.MODEL.SEM_SEG_HEAD[key] = value
    with pytest.raises(ValueError, match=match):
        COPSSemSegHead(cfg, INPUT_SHAPE)


def test_head_config_refuses_a_relative_crop():
    cfg = small_cfg()
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "relative_range"
    cfg.INPUT.CROP.SIZE = [0.9, 0.9]
    for build in (COPSSemSegHead, build_affinity_head):
        with pytest.raises(ValueError, match="INPUT.CROP.TYPE must be 'absolute'"):
            build(cfg, INPUT_SHAPE)


# ---------------------------------------------------------------------------- centred difference
@pytest.mark.parametrize("distance", [1, 2, 3, 4, 5, 16, 25, 40])
@pytest.mark.parametrize("axis", [0, 1])
def test_centered_difference_follows_grid_convention(distance, axis):
    g = torch.Generator().manual_seed(distance)
    f = torch.randn(2, 3, *GRID_HW, generator=g, dtype=torch.float64)
    out = centered_difference(f, distance, axis)
    assert out.shape == f.shape and out.dtype == f.dtype
    lo, hi = edge_offsets(distance)
    H, W = GRID_HW
    expected = torch.zeros_like(f)
    for y in range(H):
        for x in range(W):
            if axis == 0 and y - lo >= 0 and y + hi <= H - 1:
                expected[:, :, y, x] = f[:, :, y + hi, x] - f[:, :, y - lo, x]
            if axis == 1 and x - lo >= 0 and x + hi <= W - 1:
                expected[:, :, y, x] = f[:, :, y, x + hi] - f[:, :, y, x - lo]
    assert torch.equal(out, expected)
    # Non-zero exactly where GridGraph has an edge (random features: differences are non-zero).
    gg = GridGraph(H, W, [distance])
    valid = torch.from_numpy(gg.valid_masks()[0][axis])
    assert torch.equal(out[0, 0] != 0, valid)


# ---------------------------------------------------------------------------- affinity head
@pytest.mark.parametrize(
    "distances,intervals", [(DISTANCES, INTERVALS), ([1, 4, 16, 32, 64], [1, 1, 1, 1, 1])]
)
def test_affinity_head_shapes_match_grid_graph(distances, intervals):
    torch.manual_seed(0)
    cfg = small_cfg(distances=distances, intervals=intervals)
    head = build_affinity_head(cfg, INPUT_SHAPE)
    assert isinstance(head, AffinityHead)
    assert AFFINITY_HEAD_REGISTRY.get("AffinityHead") is AffinityHead
    sem = torch.randn(2, NUM_CLASSES, *GRID_HW)
    logits, losses = head(features(), sem)
    assert losses == {}
    gg = GridGraph(*GRID_HW, distances, intervals)
    assert [tuple(x.shape[1:]) for x in logits] == gg.map_shapes
    assert all(x.shape[0] == 2 and x.dtype == torch.float32 for x in logits)
    # The maps plug straight into the grid graph's edge list.
    values = gg.maps_to_edge_values([x.detach().numpy() for x in logits])
    assert values.shape == (2, gg.num_edges)


def test_affinity_head_classifier_inputs_and_groups():
    """The classifier of d > 1 sees [row differences, column differences] of the head features;
    its two 3x3 convs are grouped (the first half of their output depends only on the row
    differences, the second half only on the columns) and its 1x1 predictor is dense over both
    halves, as the original (``Conv2d(in_factor * head_channels / 8, 2, 1)``)."""
    torch.manual_seed(0)
    head = build_affinity_head(small_cfg(), INPUT_SHAPE).eval()
    captured = {}
    head.head.register_forward_hook(lambda m, i, o: captured.__setitem__("head", o))
    for idx, clf in enumerate(head.classifiers):
        clf["convs"].register_forward_pre_hook(
            lambda m, i, idx=idx: captured.__setitem__(idx, i[0])
        )
    sem = torch.randn(2, NUM_CLASSES, *GRID_HW)
    with torch.no_grad():
        logits = head.layers(features(), sem)
    f = captured["head"]
    C = f.shape[1]
    for idx, (d, s) in enumerate(zip(head.edge_distances, head.edge_sampling_intervals)):
        x = captured[idx]
        clf = head.classifiers[idx]
        groups = 1 if d == 1 else 2
        assert tuple(clf["predictor"].weight.shape) == (2, groups * C // 8, 1, 1)
        assert clf["predictor"].groups == 1 and clf["predictor"].bias is not None
        if d == 1:
            assert torch.equal(x, f)
            continue
        assert torch.equal(x[:, :C], centered_difference(f, d, 0))
        assert torch.equal(x[:, C:], centered_difference(f, d, 1))
        half = C // 8
        with torch.no_grad():
            z = clf["convs"](x)
            ref = clf["predictor"](z[:, :, ::s, ::s])
            assert torch.equal(ref, logits[idx])
            rows_changed = x.clone()
            rows_changed[:, :C] += torch.randn_like(rows_changed[:, :C])
            zr = clf["convs"](rows_changed)
            assert torch.equal(zr[:, half:], z[:, half:])
            assert not torch.equal(zr[:, :half], z[:, :half])
            cols_changed = x.clone()
            cols_changed[:, C:] += torch.randn_like(cols_changed[:, C:])
            zc = clf["convs"](cols_changed)
            assert torch.equal(zc[:, :half], z[:, :half])
            assert not torch.equal(zc[:, half:], z[:, half:])
            # Dense predictor: both output channels see both halves.
            for out in (clf["predictor"](zr[:, :, ::s, ::s]), clf["predictor"](zc[:, :, ::s, ::s])):
                assert not torch.equal(out[:, 0], ref[:, 0])
                assert not torch.equal(out[:, 1], ref[:, 1])


def test_affinity_head_semantic_logits_are_detached():
    torch.manual_seed(0)
    head = build_affinity_head(small_cfg(), INPUT_SHAPE)
    sem = torch.randn(2, NUM_CLASSES, *GRID_HW, requires_grad=True)
    logits, _ = head(features(), sem)
    sum(x.sum() for x in logits).backward()
    assert sem.grad is None


def test_affinity_loss_gradients_and_weight_zero_edges():
    torch.manual_seed(0)
    cfg = small_cfg()
    cfg.MODEL.AFFINITY_HEAD.LOSS_WEIGHT = 0.5
    head = build_affinity_head(cfg, INPUT_SHAPE)
    sem = torch.randn(2, NUM_CLASSES, *GRID_HW)
    logits = head.layers(features(), sem)
    targets, weights = affinity_targets(head, logits)
    _, losses = head(features(), sem, targets, weights)
    assert set(losses) == {f"loss_affinity_d{d}" for d in DISTANCES}
    for d in DISTANCES:
        assert torch.isfinite(losses[f"loss_affinity_d{d}"])
    # d = 32 does not fit in an 18x25 grid: no edge, loss exactly 0.
    assert losses["loss_affinity_d32"].item() == 0.0
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        if name.startswith("classifiers.5."):  # d = 32: no valid edge, zero gradient
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name

    # Flipping targets where the weight is 0 leaves every loss unchanged; flipping a weighted
    # target changes it.
    with torch.no_grad():
        logits = [x.detach() for x in logits]
        base = head.losses(logits, targets, weights)
        flipped = [torch.where(w == 0, 1 - t, t) for t, w in zip(targets, weights)]
        again = head.losses(logits, flipped, weights)
        for k in base:
            assert torch.equal(base[k], again[k]), k
        changed = [t.clone() for t in targets]
        changed[0][weights[0] > 0] = 1 - changed[0][weights[0] > 0]
        assert not torch.equal(head.losses(logits, changed, weights)["loss_affinity_d1"], base["loss_affinity_d1"])


def _original_affinity_loss(x, t, w, top_k):
    """The original formula, written out by hand (``compute_affinity_loss`` in the authors'
    ``panoptic_seg_affinity.py``): for each channel c, l = BCE(x_c, t_c) * w_c over all B*H*W
    positions; keep the int(top_k * numel) largest (all when top_k = 1); plain mean; sum over c."""
    total = 0.0
    for c in range(2):
        xc, tc, wc = x[:, c].ravel(), t[:, c].ravel(), w[:, c].ravel()
        per = [
            (max(a, 0.0) - a * b + math.log1p(math.exp(-abs(a)))) * q
            for a, b, q in zip(xc.tolist(), tc.tolist(), wc.tolist())
        ]
        if top_k < 1:
            per = sorted(per, reverse=True)[: int(top_k * len(per))]
        total += sum(per) / len(per)
    return total


def _affinity_losses_on_random_maps(cfg):
    """Affinity head of ``cfg`` and its losses on seeded random cut logits (batch 2) with
    targets and weights from ``affinity_targets``: ``(head, logits, targets, weights, losses)``."""
    head = build_affinity_head(cfg, INPUT_SHAPE)
    gg = GridGraph(*GRID_HW, head.edge_distances, head.edge_sampling_intervals)
    rng = np.random.default_rng(0)
    logits = [torch.from_numpy(rng.normal(0, 3, (2,) + s)).float() for s in gg.map_shapes]
    targets, weights = affinity_targets(head, logits, seed=3)
    return head, logits, targets, weights, head.losses(logits, targets, weights)


@pytest.mark.parametrize("top_k", [1.0, 0.25])
def test_affinity_loss_original_normalisation(top_k):
    cfg = small_cfg()
    cfg.MODEL.AFFINITY_HEAD.LOSS_TOP_K = top_k
    cfg.MODEL.AFFINITY_HEAD.LOSS_WEIGHT = 3.0
    assert cfg.MODEL.AFFINITY_HEAD.LOSS_NORMALIZATION == "per_channel_mean"  # the default
    head, logits, targets, weights, losses = _affinity_losses_on_random_maps(cfg)
    for d, x, t, w in zip(DISTANCES, logits, targets, weights):
        expected = _original_affinity_loss(x.double().numpy(), t.double().numpy(), w.double().numpy(), top_k)
        assert losses[f"loss_affinity_d{d}"].item() == pytest.approx(3.0 * expected, rel=1e-5)


def test_affinity_loss_original_normalisation_small_case():
    """A 1x2x2x3 case computed on paper: per channel the mean over all 6 positions (weight-0
    ones count in the denominator), top-k (k = int(0.5 * 6) = 3) over all positions."""
    cfg = small_cfg(distances=[1], intervals=[1])
    cfg.MODEL.AFFINITY_HEAD.LOSS_WEIGHT = 1.0
    x = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[2.0, -2.0, 0.0], [0.0, 0.0, 0.0]]]])
    t = torch.tensor([[[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]])
    w = torch.tensor([[[[1.0, 4.0, 0.0], [12.0, 1.0, 0.0]], [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]])
    ln2 = math.log(2.0)
    bce = lambda a, b: max(a, 0.0) - a * b + math.log1p(math.exp(-abs(a)))  # noqa: E731
    ch0 = [ln2 * 1, ln2 * 4, 0.0, ln2 * 12, ln2 * 1, 0.0]
    ch1 = [bce(2.0, 1.0), bce(-2.0, 1.0), ln2, 0.0, 0.0, 0.0]
    head = build_affinity_head(cfg, INPUT_SHAPE)
    full = head.losses([x], [t], [w])["loss_affinity_d1"].item()
    assert full == pytest.approx(sum(ch0) / 6 + sum(ch1) / 6, rel=1e-6)
    cfg.MODEL.AFFINITY_HEAD.LOSS_TOP_K = 0.5
    head = build_affinity_head(cfg, INPUT_SHAPE)
    top = head.losses([x], [t], [w])["loss_affinity_d1"].item()
    k0 = sorted(ch0, reverse=True)[:3]
    k1 = sorted(ch1, reverse=True)[:3]
    assert top == pytest.approx(sum(k0) / 3 + sum(k1) / 3, rel=1e-6)


@pytest.mark.parametrize("top_k", [1.0, 0.25])
def test_affinity_loss_weight_sum_normalisation(top_k):
    cfg = small_cfg()
    cfg.MODEL.AFFINITY_HEAD.LOSS_TOP_K = top_k
    cfg.MODEL.AFFINITY_HEAD.LOSS_WEIGHT = 3.0
    cfg.MODEL.AFFINITY_HEAD.LOSS_NORMALIZATION = "weight_sum"
    head, logits, targets, weights, losses = _affinity_losses_on_random_maps(cfg)
    for d, x, t, w in zip(DISTANCES, logits, targets, weights):
        x, t, w = x.double().numpy(), t.double().numpy(), w.double().numpy()
        per_edge = (np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))) * w
        m = w > 0
        vals, ws = per_edge[m], w[m]
        if vals.size == 0:
            expected = 0.0
        elif top_k < 1:
            order = np.argsort(-vals)[: max(1, int(top_k * vals.size))]
            expected = vals[order].sum() / ws[order].sum()
        else:
            expected = vals.sum() / ws.sum()
        assert losses[f"loss_affinity_d{d}"].item() == pytest.approx(3.0 * expected, rel=1e-5)

    if top_k < 1:
        # Making the easiest weighted edge even easier leaves the top-k loss unchanged (it is not
        # kept); making it the hardest edge changes the loss.
        x0 = logits[0].clone()
        t0, w0 = targets[0], weights[0]
        per_edge = torch.nn.functional.binary_cross_entropy_with_logits(x0, t0, reduction="none") * w0
        per_edge[w0 == 0] = float("inf")
        easiest = torch.argmin(per_edge)
        easier = x0.clone().flatten()
        sign = 1.0 if t0.flatten()[easiest] > 0.5 else -1.0
        easier[easiest] = sign * 50.0
        new = head.losses([easier.view_as(x0)] + logits[1:], targets, weights)
        assert new["loss_affinity_d1"].item() == pytest.approx(losses["loss_affinity_d1"].item(), rel=1e-6)
        harder = x0.clone().flatten()
        harder[easiest] = -sign * 50.0
        new = head.losses([harder.view_as(x0)] + logits[1:], targets, weights)
        assert new["loss_affinity_d1"].item() > losses["loss_affinity_d1"].item()


def test_affinity_loss_weight_zero():
    cfg = small_cfg()
    cfg.MODEL.AFFINITY_HEAD.LOSS_WEIGHT = 0.0
    head = build_affinity_head(cfg, INPUT_SHAPE)
    sem = torch.randn(2, NUM_CLASSES, *GRID_HW)
    logits = head.layers(features(), sem)
    targets, weights = affinity_targets(head, logits)
    assert head(features(), sem, targets, weights)[1] == {}


@pytest.mark.parametrize("key,value,match", [
    ("EDGE_DISTANCES", [1, 4, 4], "AFFINITY_HEAD.EDGE_DISTANCES must be distinct"),
    ("EDGE_DISTANCES", [0, 4, 16, 32, 64, 96], r"AFFINITY_HEAD.EDGE_DISTANCES\[0\] must be >= 1"),
    ("EDGE_DISTANCES", [1.0, 2, 3, 4, 16, 32], r"AFFINITY_HEAD.EDGE_DISTANCES\[0\] must be an integer, got 1.0"),
    ("EDGE_SAMPLING_INTERVALS", [1], "AFFINITY_HEAD.EDGE_DISTANCES .* EDGE_SAMPLING_INTERVALS hold one entry per"),
    ("HEAD_CHANNELS", 12, "AFFINITY_HEAD.HEAD_CHANNELS must be a multiple of 8"),
    ("LOSS_NORMALIZATION", "mean", "AFFINITY_HEAD.LOSS_NORMALIZATION must be one of"),
])
def test_affinity_head_config_values_are_checked(key, value, match):
    cfg = small_cfg()
    cfg.MODEL.AFFINITY_HEAD[key] = value
    with pytest.raises(ValueError, match=match):
        build_affinity_head(cfg, INPUT_SHAPE)


# ---------------------------------------------------------------------------- authors' shapes
PAPER_SHAPE = {
    "res2": ShapeSpec(channels=256, stride=4),
    "res3": ShapeSpec(channels=512, stride=8),
    "res5": ShapeSpec(channels=2048, stride=16),
}


def _authors_head_shapes(num_classes, distances, channels=256):
    """Parameter shapes of the original heads' parts that follow the decoder, transcribed from
    the authors' ``panoptic_seg_affinity.py`` (``PanopticAffinitySemSegHead.head``/``predictor``,
    ``PanopticAffinityInsEmbedHead.affinity_head``/``classifiers``) with the paper configs
    (HEAD_CHANNELS = CONVS_DIM = ASPP_CHANNELS = 256), in our module names."""
    bn = lambda p, c: {f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,)}  # noqa: E731
    sem = {"head.0.weight": (channels, channels, 3, 3), "head.1.weight": (channels, channels, 3, 3),
           "predictor.weight": (num_classes, channels, 1, 1), "predictor.bias": (num_classes,)}
    sem.update(bn("head.0", channels))
    sem.update(bn("head.1", channels))
    aff = {"head.0.weight": (channels, channels + num_classes, 3, 3), "head.1.weight": (channels, channels, 3, 3)}
    aff.update(bn("head.0", channels))
    aff.update(bn("head.1", channels))
    for i, d in enumerate(distances):
        f = 1 if d <= 1 else 2  # the original's in_factor
        p = f"classifiers.{i}"
        aff[f"{p}.convs.0.weight"] = (f * channels // 4, channels, 3, 3)  # groups = f
        aff[f"{p}.convs.1.weight"] = (f * channels // 8, channels // 4, 3, 3)
        aff.update(bn(f"{p}.convs.0", f * channels // 4))
        aff.update(bn(f"{p}.convs.1", f * channels // 8))
        aff[f"{p}.predictor.weight"] = (2, f * channels // 8, 1, 1)  # dense, as their classifiers.{i}.2
        aff[f"{p}.predictor.bias"] = (2,)
    return sem, aff


@pytest.mark.parametrize("dataset", ["Cityscapes", "COCO"])
def test_heads_match_authors_parameter_shapes(dataset):
    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / f"{dataset}-PanopticSegmentation" / "cops_R_52_pretrain.yaml"))
    sem_head = SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, PAPER_SHAPE)
    aff_head = build_affinity_head(cfg, PAPER_SHAPE)
    sem, aff = _authors_head_shapes(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES)
    for module, expected in ((sem_head, sem), (aff_head, aff)):
        got = {n: tuple(p.shape) for n, p in module.named_parameters() if not n.startswith("decoder.")}
        assert got == expected


# ---------------------------------------------------------------------------- YAML configs
def test_paper_configs_exist():
    names = {(p.parent.name, p.name) for p in PAPER_CONFIGS}
    for d in ("Cityscapes-PanopticSegmentation", "COCO-PanopticSegmentation"):
        for f in ("Base-COPS.yaml", "cops_R_52_pretrain.yaml", "cops_R_52_fully_differentiable.yaml"):
            assert (d, f) in names


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_config_merges_and_builds_heads(path):
    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(path))  # raises KeyError on any unknown key
    assert cfg.MODEL.META_ARCHITECTURE == "COPS"
    aff = cfg.MODEL.AFFINITY_HEAD
    assert len(aff.EDGE_DISTANCES) == len(aff.EDGE_SAMPLING_INTERVALS)
    crop_h, crop_w = cfg.INPUT.CROP.SIZE
    assert crop_h % 16 == 0 and crop_w % 16 == 0
    if "Cityscapes" in path.parent.name:
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19
        assert list(aff.EDGE_DISTANCES) == [1, 4, 16, 32, 64]
    else:
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133
        assert list(aff.EDGE_DISTANCES) == [1, 4, 16, 32]
        assert cfg.MODEL.COPS.SIZE_DIVISIBILITY == 640
    if path.name.endswith("fully_differentiable.yaml"):
        assert cfg.MODEL.COPS.FULLY_DIFFERENTIABLE
        assert cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT == 0 and aff.LOSS_WEIGHT == 0
        assert cfg.MODEL.COPS.FREEZE_BN
    elif path.name.endswith("pretrain.yaml"):
        assert not cfg.MODEL.COPS.FULLY_DIFFERENTIABLE
        assert cfg.MODEL.WEIGHTS == "detectron2://DeepLab/R-52.pkl"
    # Both heads build from the paper settings (backbone: DeepLab ResNet, res5 dilated: stride 16).
    shape = {
        "res2": ShapeSpec(channels=256, stride=4),
        "res3": ShapeSpec(channels=512, stride=8),
        "res5": ShapeSpec(channels=2048, stride=16),
    }
    sem = SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, shape)
    assert isinstance(sem, COPSSemSegHead)
    head = build_affinity_head(cfg, shape)
    assert len(head.classifiers) == len(aff.EDGE_DISTANCES)


def test_cpu_scale_cityscapes_configs_scale_the_paper_settings():
    assert {p.name for p in CPU_SCALE_CONFIGS} == {
        "cops_R_18_512x256_pretrain.yaml",
        "cops_R_18_512x256_fully_differentiable.yaml",
    }
    cfgs = {}
    for path in CPU_SCALE_CONFIGS:
        cfg = get_cfg()
        add_cops_config(cfg)
        cfg.merge_from_file(str(path))
        cfgs[path.name] = cfg
    pre = cfgs["cops_R_18_512x256_pretrain.yaml"]
    fd = cfgs["cops_R_18_512x256_fully_differentiable.yaml"]
    for cfg in (pre, fd):
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19
        # [1, 4, 16, 32, 64] on the 256x512 grid of 1024x2048 frames, scaled to 64x128
        assert list(cfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES) == [1, 2, 4, 8, 16]
        assert tuple(cfg.INPUT.CROP.SIZE) == (256, 512)
        assert (cfg.MODEL.COPS.STUFF_AREA, cfg.MODEL.COPS.INSTANCE_AREA) == (128, 12)
    assert not pre.MODEL.COPS.FULLY_DIFFERENTIABLE and fd.MODEL.COPS.FULLY_DIFFERENTIABLE
    assert fd.MODEL.WEIGHTS == os.path.join(pre.OUTPUT_DIR, "model_final.pth")
    assert fd.MODEL.COPS.FREEZE_BN and fd.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT == 0
    assert fd.MODEL.AFFINITY_HEAD.LOSS_WEIGHT == 0
    # The measured departure: the authors' per-part rates without the semantic head's groups.
    default = get_cfg()
    add_cops_config(default)
    authors = dict(zip(default.SOLVER.LR_GROUP_PATTERNS, default.SOLVER.LR_GROUP_STAGES))
    ours = dict(zip(fd.SOLVER.LR_GROUP_PATTERNS, fd.SOLVER.LR_GROUP_STAGES))
    assert ours == {p: k for p, k in authors.items() if not p.startswith("sem_seg_head")}
    assert len(ours) == len(authors) - 2 and fd.SOLVER.LR_GROUP_FREEZE_OTHERS


# ---------------------------------------------------------------------------- train_net
def load_train_net():
    path = REPO / "tools" / "train_net.py"
    spec = importlib.util.spec_from_file_location("cops_train_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,cls", [("ADAM", "Adam"), ("SGD", "SGD")])
def test_build_optimizer_skips_frozen_parameters(name, cls):
    train_net = load_train_net()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1)
    )
    for p in model[0].parameters():
        p.requires_grad_(False)
    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.SOLVER.OPTIMIZER = name
    cfg.SOLVER.BASE_LR = 0.01
    opt = train_net.Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, getattr(torch.optim, cls))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(g["lr"] == 0.01 for g in opt.param_groups)

    cfg.SOLVER.OPTIMIZER = "RMSPROP"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        train_net.Trainer.build_optimizer(cfg, model)
    for p in model.parameters():
        p.requires_grad_(False)
    cfg.SOLVER.OPTIMIZER = name
    with pytest.raises(ValueError, match="no trainable parameter"):
        train_net.Trainer.build_optimizer(cfg, model)


# ---------------------------------------------------------------------------- demo
def load_demo():
    path = REPO / "tools" / "demo.py"
    spec = importlib.util.spec_from_file_location("cops_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_input_expansion(tmp_path):
    demo = load_demo()
    (tmp_path / "a").mkdir()
    for name in ("a/x.jpg", "a/y.PNG", "a/notes.txt", "b.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"")
    files = demo.expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.jpg"), str(tmp_path / "c.png"),
                                str(tmp_path / "b.jpg")])
    assert [Path(f).name for f in files] == ["x.jpg", "y.PNG", "b.jpg", "c.png"]
    with pytest.raises(ValueError, match="missing.jpg"):
        demo.expand_inputs([str(tmp_path / "missing.jpg")])
    with pytest.raises(ValueError, match="matches no file"):
        demo.expand_inputs([str(tmp_path / "*.bmp")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        demo.expand_inputs([str(tmp_path / "empty")])
    assert demo.output_names(["p/x.jpg", "q/x.png", "y.jpg", "r/x.jpg"]) == [
        "x_panoptic.png", "x_1_panoptic.png", "y_panoptic.png", "x_2_panoptic.png"
    ]


def test_demo_bad_arguments_exit_with_status_2(tmp_path):
    """An --output that is a file, a config that cannot be read or names no dataset: exit status
    2 with the reason logged, before a model is built (not a traceback, not status 1)."""
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    demo = load_demo()
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    blocker = tmp_path / "out.png"
    blocker.write_bytes(b"")
    yaml = str(REPO / "configs" / "sample" / "cops_R_18_pretrain.yaml")
    assert demo.main(["--config-file", yaml, "--input", str(image), "--output", str(blocker)]) == 2
    assert demo.main(["--config-file", yaml, "--input", str(image), "--output", str(tmp_path / "o"),
                      "--opts", "MODEL.NO_SUCH_KEY", "1"]) == 2
    assert demo.main(["--config-file", yaml, "--input", str(image), "--output", str(tmp_path / "o"),
                      "--opts", "DATASETS.TEST", "()", "DATASETS.TRAIN", "()"]) == 2
    assert not (tmp_path / "o").exists()
