"""Tests of detectron2_cops.data: RGB id encoding, COPS target generator, dataset registration
and the dataset mapper (the last two on the real COCO panoptic sample; they need Detectron2)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2_cops.data.panoptic_utils import id2rgb, rgb2id
from detectron2_cops.data.target_generator import (
    COPSTargetGenerator,
    grid_sample_coordinates,
    grid_size,
)
from detectron2_cops.solvers.grid import GridGraph

REPO = Path(__file__).resolve().parents[1]
# The bundled sample (datasets/coco_panoptic_sample in the repository); COPS_TEST_DATASETS
# names another dataset root that holds coco_panoptic_sample/.
DATASETS_ROOT = Path(os.environ.get("COPS_TEST_DATASETS", REPO / "datasets"))
SAMPLE = DATASETS_ROOT / "coco_panoptic_sample"

DISTANCES = [1, 4, 16, 32, 64]


def _need_sample():
    if not (SAMPLE / "panoptic.json").is_file():
        pytest.fail(f"the bundled COCO panoptic sample is missing at {SAMPLE} (datasets/coco_panoptic_sample "
                    "in the repository; COPS_TEST_DATASETS overrides its root)")


def _need_detectron2():
    return pytest.importorskip("detectron2", reason="Detectron2 is not installed")


# ----------------------------------------------------------------------------- brute force
def node_weights(ok, thing, small, instance_weight=4.0, small_weight=3.0, ignore_stuff=False):
    """Per-node affinity weights of the original (thing: instance weight, times the small
    instance weight for small things; stuff: 1 or 0; 0 where not ok)."""
    w = np.where(thing, instance_weight * np.where(small, small_weight, 1.0), 0.0 if ignore_stuff else 1.0)
    return np.where(ok, w, 0.0)


def brute_force_affinities(panoptic_ids, node_w, distances, intervals):
    """Edge labels and weights computed edge by edge from GridGraph.edges (independent of the
    slicing implementation): label = ids differ; weight = max of the endpoint weights if both
    are > 0, else 0."""
    h, w = panoptic_ids.shape
    g = GridGraph(h, w, distances, intervals)
    P = panoptic_ids.ravel()
    nw = np.asarray(node_w, np.float64).ravel()
    labels = np.zeros(g.num_edges, np.float32)
    weights = np.zeros(g.num_edges, np.float32)
    for e, (u, v) in enumerate(g.edges.tolist()):
        labels[e] = float(P[u] != P[v])
        if nw[u] > 0 and nw[v] > 0:
            weights[e] = max(nw[u], nw[v])
    return g.edge_values_to_maps(labels), g.edge_values_to_maps(weights)


def original_affinities(pan, segments, thing_ids, distances, intervals=None, instance_weight=4.0,
                        small_area=4096, small_weight=3, ignore_stuff=False, size_div=0, f=4):
    """Transcription of the original ``PanopticAffinityTargetGenerator.__call__`` (the authors'
    ``target_generator.py`` lines 88-211, affinity part; ``ImageList.from_tensors`` padding
    written with ``np.pad``; label_divisor 1000). Valid for d = 1 or even d and for sizes whose
    padded size is a multiple of f (what the original assumes)."""
    mask = np.zeros(pan.shape, np.float32)
    fp = np.zeros(pan.shape, np.int32) - 1
    inst = {}
    for seg in segments:
        c, m = seg["category_id"], pan == seg["id"]
        if not seg["iscrowd"] and (not ignore_stuff or c in thing_ids):
            mask[m] = 1
        if c not in thing_ids:
            fp[m] = c * 1000
        if c in thing_ids and not seg["iscrowd"]:
            if m.sum() == 0:
                continue
            k = inst.get(c, 1)
            fp[m] = c * 1000 + k
            inst[c] = k + 1
            mask[m] = instance_weight
            if m.sum() < small_area:
                mask[m] = instance_weight * small_weight
    if size_div > 0:
        H, W = pan.shape
        ph, pw = -(-H // size_div) * size_div - H, -(-W // size_div) * size_div - W
        fp = np.pad(fp, ((0, ph), (0, pw)), constant_values=-1)
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=1)
    r = f // 2
    mask, fp = mask[r::f, r::f], fp[r::f, r::f]
    affs, ws = [], []
    for i, e in enumerate(distances):
        si = 1 if intervals is None else intervals[i]
        pad = ((0, 1), (0, 0)) if e == 1 else ((e // 2, e // 2), (0, 0))
        row = np.pad(fp[e:, :] != fp[:-e, :], pad)
        wrow = np.pad(((mask[e:, :] > 0) & (mask[:-e, :] > 0)) * np.maximum(mask[e:, :], mask[:-e, :]), pad)
        pad = ((0, 0), (0, 1)) if e == 1 else ((0, 0), (e // 2, e // 2))
        col = np.pad(fp[:, e:] != fp[:, :-e], pad)
        wcol = np.pad(((mask[:, e:] > 0) & (mask[:, :-e] > 0)) * np.maximum(mask[:, e:], mask[:, :-e]), pad)
        affs.append(np.stack((row, col))[:, ::si, ::si].astype(np.float32))
        ws.append(np.stack((wrow, wcol))[:, ::si, ::si].astype(np.float32))
    return affs, ws


def sample_segments(ann, categories):
    """segments_info of a sample annotation with contiguous category ids (category order)."""
    cmap = {c["id"]: i for i, c in enumerate(categories)}
    return [dict(s, category_id=cmap[s["category_id"]]) for s in ann["segments_info"]]


@pytest.fixture(scope="module")
def sample_gt():
    _need_sample()
    data = json.loads((SAMPLE / "panoptic.json").read_text())
    categories = json.loads((SAMPLE / "panoptic_coco_categories.json").read_text())
    out = []
    for ann in data["annotations"]:
        pan = rgb2id(np.asarray(Image.open(SAMPLE / "panoptic" / ann["file_name"]).convert("RGB")))
        out.append((pan, sample_segments(ann, categories), ann))
    thing_ids = [i for i, c in enumerate(categories) if c["isthing"]]
    return out, thing_ids, categories


# ----------------------------------------------------------------------------- rgb ids
def test_rgb2id_id2rgb_roundtrip_and_errors():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256**3, size=(7, 9))
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (7, 9, 3)
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    assert rgb2id(np.array([[[1, 2, 3]]], np.uint8))[0, 0] == 1 + 2 * 256 + 3 * 65536
    with pytest.raises(ValueError, match="ids must lie"):
        id2rgb(np.array([[-1]]))
    with pytest.raises(ValueError, match="ids must lie"):
        id2rgb(np.array([[256**3]]))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        rgb2id(np.zeros((4, 4), np.uint8))


# ----------------------------------------------------------------------------- grid sampling
def test_grid_size_and_sampling_not_divisible_by_4():
    assert grid_size(427, 640) == (107, 160)
    rows, cols = grid_sample_coordinates(427, 640)
    assert rows[0] == 2 and rows[-1] == 426 and cols[-1] == 638
    rows, cols = grid_sample_coordinates(5, 3)
    np.testing.assert_array_equal(rows, [2, 4])
    np.testing.assert_array_equal(cols, [2])
    with pytest.raises(ValueError, match="stride"):
        grid_size(4, 4, 0)


# ----------------------------------------------------------------------------- generator
def _toy():
    """13 x 10 image: stuff class 5 (id 7) top, things of class 1 (ids 3, 4), a crowd of class 1
    (id 9), a thing of class 2 (id 11), void columns."""
    pan = np.zeros((13, 10), np.int64)
    pan[:4, :] = 7
    pan[4:9, 0:4] = 3
    pan[4:9, 4:7] = 4
    pan[9:, 0:5] = 9
    pan[9:, 5:8] = 11
    segments = [
        {"id": 7, "category_id": 5, "iscrowd": 0},
        {"id": 3, "category_id": 1, "iscrowd": 0},
        {"id": 4, "category_id": 1, "iscrowd": 0},
        {"id": 9, "category_id": 1, "iscrowd": 1},
        {"id": 11, "category_id": 2, "iscrowd": 0},
    ]
    return pan, segments


def test_generator_toy_values_exact():
    pan, segments = _toy()
    gen = COPSTargetGenerator(
        thing_ids=[1, 2],
        class_ids=range(6),
        small_instance_area=16,
        small_instance_weight=3,
        edge_distances=[1, 2],
        stride=2,
    )
    out = gen(pan, segments)
    sem, sw = out["sem_seg"].numpy(), out["sem_seg_weights"].numpy()
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg_weights"].dtype == torch.float32
    expected_sem = np.full(pan.shape, 255)
    for s in segments:
        expected_sem[pan == s["id"]] = s["category_id"]
    np.testing.assert_array_equal(sem, expected_sem)  # crowd keeps its class by default
    # areas: id 3: 20 px, id 4: 15 px (< 16: small), id 11: 12 px (small), crowd 20 px
    np.testing.assert_array_equal(sw[pan == 4], 3.0)
    np.testing.assert_array_equal(sw[pan == 11], 3.0)
    np.testing.assert_array_equal(sw[pan == 3], 1.0)
    np.testing.assert_array_equal(sw[pan == 9], 1.0)  # crowd is never "small instance"
    np.testing.assert_array_equal(sw[pan == 7], 1.0)
    np.testing.assert_array_equal(sw[pan == 0], 0.0)

    # stride-2 grid: (7, 5); grid pixel (i, j) reads (min(2i+1, 12), min(2j+1, 9))
    P = out["panoptic_ids"].numpy()
    assert P.shape == (7, 5) and P.dtype == np.int64
    id_map = {7: 5000, 3: 1001, 4: 1002, 9: 1003, 11: 2001, 0: -1}
    for i in range(7):
        for j in range(5):
            assert P[i, j] == id_map[int(pan[min(2 * i + 1, 12), min(2 * j + 1, 9)])]
    np.testing.assert_array_equal(out["crowd_ids"].numpy(), [1003])
    np.testing.assert_array_equal(out["gt_classes"].numpy(), [5, 1, 1, 2])
    masks = out["gt_masks"].numpy()
    assert masks.dtype == bool
    for m, pid in zip(masks, [5000, 1001, 1002, 2001]):
        np.testing.assert_array_equal(m, P == pid)
    np.testing.assert_array_equal(
        out["pixel_weights"].numpy(), ((P != -1) & (P != 1003)).astype(np.float32)
    )

    node_ok = (P != -1) & (P != 1003)
    thing = (P // 1000 == 1) | (P // 1000 == 2)
    small = np.isin(P, [1002, 2001])  # ids 4 and 11 are under 16 pixels
    labels, weights = brute_force_affinities(P, node_weights(node_ok, thing, small), [1, 2], None)
    for a, b in zip(labels, out["affinity_targets"]):
        np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(weights, out["affinity_weights"]):
        np.testing.assert_array_equal(a, b.numpy())
    # spot checks of the convention: d = 1, channel 1 at (0, 0) joins stuff (0,0)-(0,1): join
    assert out["affinity_targets"][0][1, 0, 0] == 0 and out["affinity_weights"][0][1, 0, 0] == 1
    # weights as the original: small thing 4 x 3 = 12 (max over the two endpoints), big thing 4
    assert set(np.unique(out["affinity_weights"][0].numpy())) == {0.0, 1.0, 4.0, 12.0}
    g = lambda i, j: P[i, j]  # noqa: E731
    assert g(2, 1) == 1001 and g(2, 2) == 1002  # grid row 2: id 3 | id 4
    assert out["affinity_weights"][0][1, 2, 1] == 12.0 and out["affinity_targets"][0][1, 2, 1] == 1.0
    # last column of channel 1 is not an edge (leaves the grid)
    assert out["affinity_weights"][0][1, :, -1].sum() == 0


def test_generator_options_crowd_and_stuff():
    pan, segments = _toy()
    gen = COPSTargetGenerator(
        thing_ids=[1, 2],
        class_ids=range(6),
        ignore_crowd_in_semantic=True,
        ignore_stuff_in_affinities=True,
        instance_affinity_weight=0.5,
        edge_distances=[1, 3],
        stride=1,
    )
    out = gen(pan, segments)
    sem, sw = out["sem_seg"].numpy(), out["sem_seg_weights"].numpy()
    assert (sem[pan == 9] == 255).all() and (sw[pan == 9] == 0).all()
    P = out["panoptic_ids"].numpy()
    np.testing.assert_array_equal(
        P, np.vectorize({7: 5000, 3: 1001, 4: 1002, 9: 1003, 11: 2001, 0: -1}.get)(pan)
    )
    node_ok = (P != -1) & (P != 1003)
    thing = (P // 1000 == 1) | (P // 1000 == 2)
    # every thing is under the default small area 4096: weight 0.5 x 3
    nw = node_weights(node_ok, thing, thing, 0.5, 3.0, ignore_stuff=True)
    labels, weights = brute_force_affinities(P, nw, [1, 3], None)
    for a, b in zip(weights, out["affinity_weights"]):
        np.testing.assert_array_equal(a, b.numpy())
    # stuff pixels weigh 0 (the original): stuff-stuff and thing-stuff edges are ignored
    assert out["affinity_weights"][0][1, 0, 0] == 0.0
    assert out["affinity_weights"][0][0, 3, 0] == 0.0 and out["affinity_targets"][0][0, 3, 0] == 1.0
    assert out["affinity_weights"][0][1, 5, 0] == 1.5  # thing-thing (id 3)
    # with crowd kept in the affinities, edges touching the crowd get the instance weight
    gen2 = COPSTargetGenerator(
        thing_ids=[1, 2],
        class_ids=range(6),
        edge_distances=[1],
        stride=1,
        ignore_crowd_in_affinities=False,
    )
    w2 = gen2(pan, segments)["affinity_weights"][0].numpy()
    assert w2[0, 8, 0] == 12.0  # (8,0) [id 3, small: 12] - (9,0) [crowd, kept: 4]


@pytest.mark.parametrize("seed", range(6))
def test_generator_affinities_match_gridgraph_random(seed):
    rng = np.random.default_rng(seed)
    H, W = rng.integers(5, 90, size=2)
    n = int(rng.integers(0, 12))
    # blocky random segments so that joins and cuts both occur
    coarse = rng.integers(0, n + 1, size=(H // 7 + 1, W // 7 + 1))
    ids = np.arange(1, n + 1) * 37
    pan = (
        np.where(coarse > 0, np.concatenate([[0], ids])[coarse], 0)
        .repeat(7, 0)
        .repeat(7, 1)[:H, :W]
    )
    classes = rng.integers(0, 6, size=n)
    crowd = rng.random(n) < 0.2
    segments = [
        {"id": int(i), "category_id": int(c), "iscrowd": int(k)}
        for i, c, k in zip(ids, classes, crowd)
    ]
    thing_ids = [0, 1, 2]
    intervals = [int(x) for x in rng.integers(1, 4, size=4)]
    distances = [1, 2, 5, 16]
    ignore_stuff = bool(seed % 2)
    gen = COPSTargetGenerator(
        thing_ids=thing_ids,
        class_ids=range(6),
        edge_distances=distances,
        edge_sampling_intervals=intervals,
        ignore_stuff_in_affinities=ignore_stuff,
    )
    out = gen(pan, segments)
    h, w = grid_size(H, W)
    P = out["panoptic_ids"].numpy()
    assert P.shape == (h, w)
    rows, cols = grid_sample_coordinates(H, W)
    seg_of = {s["id"]: s for s in segments}
    expected_P = np.full((h, w), -1)
    counters = {}
    pid = {}
    for s in segments:
        c = s["category_id"]
        if c in thing_ids:
            counters[c] = counters.get(c, 0) + 1
            pid[s["id"]] = c * 1000 + counters[c]
        else:
            pid[s["id"]] = c * 1000
    for i, r in enumerate(rows):
        for j, cc in enumerate(cols):
            if pan[r, cc]:
                expected_P[i, j] = pid[int(pan[r, cc])]
    np.testing.assert_array_equal(P, expected_P)
    crowd_px = np.zeros((h, w), bool)
    thing_px = np.zeros((h, w), bool)
    for i, r in enumerate(rows):
        for j, cc in enumerate(cols):
            if pan[r, cc]:
                s = seg_of[int(pan[r, cc])]
                crowd_px[i, j] = bool(s["iscrowd"])
                thing_px[i, j] = s["category_id"] in thing_ids
    valid = P != -1
    small_px = np.zeros((h, w), bool)
    for i, r in enumerate(rows):
        for j, cc in enumerate(cols):
            if pan[r, cc]:
                small_px[i, j] = (pan == pan[r, cc]).sum() < 4096
    nw = node_weights(valid & ~crowd_px, thing_px, small_px, ignore_stuff=ignore_stuff)
    labels, weights = brute_force_affinities(P, nw, distances, intervals)
    for k in range(len(distances)):
        assert out["affinity_targets"][k].shape == labels[k].shape
        np.testing.assert_array_equal(out["affinity_targets"][k].numpy(), labels[k])
        np.testing.assert_array_equal(out["affinity_weights"][k].numpy(), weights[k])


@pytest.mark.parametrize("seed", range(4))
def test_generator_affinities_equal_original_random(seed):
    """Targets and weights equal the transcribed original on random blocky panoptic maps (sizes a
    multiple of the stride, with and without the original's padding to a size divisibility)."""
    rng = np.random.default_rng(100 + seed)
    H, W = 4 * rng.integers(17, 30, size=2)  # grids larger than the largest distance (the original needs it)
    n = int(rng.integers(1, 12))
    coarse = rng.integers(0, n + 1, size=(H // 5 + 1, W // 5 + 1))
    ids = np.arange(1, n + 1) * 37
    pan = np.where(coarse > 0, np.concatenate([[0], ids])[coarse], 0).repeat(5, 0).repeat(5, 1)[:H, :W]
    segments = [
        {"id": int(i), "category_id": int(c), "iscrowd": int(k)}
        for i, c, k in zip(ids, rng.integers(0, 6, size=n), rng.random(n) < 0.2)
    ]
    thing_ids = [0, 1, 2]
    distances, intervals = [1, 2, 4, 16], [1, 2, 1, 3]
    size_div = [0, 32, 48, 0][seed]
    ignore_stuff = seed == 3
    gen = COPSTargetGenerator(
        thing_ids=thing_ids, class_ids=range(6), edge_distances=distances,
        edge_sampling_intervals=intervals, small_instance_area=300, small_instance_weight=3,
        instance_affinity_weight=4.0, ignore_stuff_in_affinities=ignore_stuff, size_divisibility=size_div,
    )
    out = gen(pan, segments)
    affs, ws = original_affinities(pan, segments, thing_ids, distances, intervals, 4.0, 300, 3,
                                   ignore_stuff, size_div)
    for k in range(len(distances)):
        # Targets agree wherever the loss sees them (weight > 0); at weight-0 edges the original
        # compares crowd things as void (-1), this project by their own ids.
        np.testing.assert_array_equal(out["affinity_weights"][k].numpy(), ws[k])
        m = ws[k] > 0
        np.testing.assert_array_equal(out["affinity_targets"][k].numpy()[m], affs[k][m])
    if size_div:
        assert out["affinity_targets"][0].shape[1] == -(-H // size_div) * size_div // 4
        assert out["panoptic_ids"].shape == (H // 4, W // 4)  # other outputs keep the image size


def test_generator_padding_weight_zero_ignores_padding():
    pan, segments = _toy()
    pan = pan[:12, :8]
    kw = dict(thing_ids=[1, 2], class_ids=range(6), edge_distances=[1, 2], stride=2, size_divisibility=8)
    with_pad = COPSTargetGenerator(**kw)(pan, segments)
    no_pad = COPSTargetGenerator(padding_affinity_weight=0.0, **kw)(pan, segments)
    plain = COPSTargetGenerator(**dict(kw, size_divisibility=0))(pan, segments)
    # padded to 16 x 8: grid 8 x 4; the image grid is 6 x 4
    assert with_pad["affinity_weights"][0].shape == (2, 8, 4)
    w1, w0 = with_pad["affinity_weights"][0].numpy(), no_pad["affinity_weights"][0].numpy()
    # inside the image both equal the unpadded targets (except edges that reach the padding)
    wp = plain["affinity_weights"][0].numpy()
    np.testing.assert_array_equal(w0[:, :5], wp[:, :5])
    np.testing.assert_array_equal(w0[1, 5], wp[1, 5])
    np.testing.assert_array_equal(w1[:, :5], wp[:, :5])
    assert (w0[:, 6:] == 0).all() and (w0[0, 5] == 0).all()
    # with the original's padding weight 1: padding-padding joins weigh 1, the cut from the last
    # image row (crowd / thing id 11 here: crowd weighs 0) into the padding
    assert (w1[1, 6:, :3] == 1).all() and (with_pad["affinity_targets"][0][1, 6:, :3] == 0).all()
    last = with_pad["panoptic_ids"].numpy()[5]
    for j in range(4):
        crowd = last[j] == 1003
        assert w1[0, 5, j] == (0.0 if crowd or last[j] == -1 else 12.0)
        assert with_pad["affinity_targets"][0][0, 5, j] == 1.0


def test_generator_on_sample_equals_original_with_coco_padding(sample_gt):
    images, thing_ids, categories = sample_gt
    distances = [1, 4, 16, 32]
    gen = COPSTargetGenerator(thing_ids=thing_ids, class_ids=range(len(categories)),
                              edge_distances=distances, size_divisibility=640)
    for pan, segments, _ in images:
        out = gen(pan, segments)
        affs, ws = original_affinities(pan, segments, thing_ids, distances, size_div=640)
        for k in range(len(distances)):
            assert out["affinity_targets"][k].shape == (2, 160, 160)
            np.testing.assert_array_equal(out["affinity_weights"][k].numpy(), ws[k])
            m = ws[k] > 0  # targets at weight-0 edges never reach the loss
            np.testing.assert_array_equal(out["affinity_targets"][k].numpy()[m], affs[k][m])
            assert (ws[k] == 12).any() and (ws[k][:, -20:, :] == 1).any()  # small things, padding


def test_generator_no_segments_all_void():
    gen = COPSTargetGenerator(thing_ids=[0], class_ids=[0, 1])
    out = gen(np.zeros((9, 14), np.int64), [])
    assert (out["sem_seg"].numpy() == 255).all()
    assert out["sem_seg_weights"].sum() == 0 and out["pixel_weights"].sum() == 0
    assert out["gt_masks"].shape == (0, 3, 4) and out["gt_classes"].shape == (0,)
    assert out["crowd_ids"].shape == (0,) and (out["panoptic_ids"] == -1).all()
    assert all(w.sum() == 0 for w in out["affinity_weights"])
    assert all(t.sum() == 0 for t in out["affinity_targets"])


def test_generator_errors():
    pan, segments = _toy()
    gen = COPSTargetGenerator(thing_ids=[1, 2], class_ids=range(6))
    with pytest.raises(ValueError, match="not in segments_info"):
        gen(pan, segments[:-1])
    bad = copy.deepcopy(segments)
    bad[0]["category_id"] = 77
    with pytest.raises(ValueError, match="category_id 77"):
        gen(pan, bad)
    bad = copy.deepcopy(segments)
    bad[1]["id"] = 7
    with pytest.raises(ValueError, match="duplicate"):
        gen(pan, bad)
    with pytest.raises(ValueError, match="integer array"):
        gen(pan.astype(np.float32), segments)
    with pytest.raises(ValueError, match="instance_affinity_weight"):
        COPSTargetGenerator(thing_ids=[1], instance_affinity_weight=-1)
    with pytest.raises(ValueError, match="edge_sampling_intervals"):
        COPSTargetGenerator(thing_ids=[1], edge_distances=[1, 2], edge_sampling_intervals=[1])


def test_generator_on_sample_matches_gridgraph_and_gt(sample_gt):
    images, thing_ids, categories = sample_gt
    gen = COPSTargetGenerator(
        thing_ids=thing_ids, class_ids=range(len(categories)), edge_distances=DISTANCES
    )
    seen = set()
    for pan, segments, ann in images:
        out = gen(pan, segments)
        P = out["panoptic_ids"].numpy()
        thing = np.isin(P // 1000, thing_ids) & (P >= 0)
        crowd = np.isin(P, out["crowd_ids"].numpy())
        rows, cols = grid_sample_coordinates(*pan.shape)
        area = {s["id"]: (pan == s["id"]).sum() for s in segments}
        small = np.vectorize(lambda i: i > 0 and area[i] < 4096)(pan[np.ix_(rows, cols)])
        nw = node_weights((P >= 0) & ~crowd, thing, small)
        labels, weights = brute_force_affinities(P, nw, DISTANCES, None)
        for a, b in zip(labels, out["affinity_targets"]):
            np.testing.assert_array_equal(a, b.numpy())
        for a, b in zip(weights, out["affinity_weights"]):
            np.testing.assert_array_equal(a, b.numpy())
        seen |= set(np.unique(weights[0]).tolist())
        # every json segment has the area the json says (sanity of the decoding)
        for s in ann["segments_info"]:
            assert (pan == s["id"]).sum() == s["area"]
    assert {4.0, 12.0} <= seen  # big and small things on the sample


# ============================================================================= Detectron2 side
@pytest.fixture(scope="module")
def d2():
    _need_detectron2()
    _need_sample()
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from detectron2_cops.data import datasets as cops_datasets

    return DatasetCatalog, MetadataCatalog, cops_datasets


def _unique(prefix="cops_test"):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _copy_sample(tmp_path, name, edit=None):
    """Copy the sample to tmp_path/name; ``edit(folder, json_data)`` may change it."""
    folder = tmp_path / name
    shutil.copytree(SAMPLE, folder)
    for p in folder.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(folder, 0o755)
    data = json.loads((folder / "panoptic.json").read_text())
    if edit is not None:
        edit(folder, data)
    (folder / "panoptic.json").write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def sample_name(d2, tmp_path_factory):
    """The real sample registered under a unique name (a symlink to the bundled folder)."""
    _, _, cops_datasets = d2
    name = _unique("cops_sample")
    root = tmp_path_factory.mktemp("root")
    os.symlink(SAMPLE, root / name)
    cops_datasets.register_coco_panoptic_folder(name, str(root))
    return name


def _cfg(**input_overrides):
    from detectron2.config import get_cfg

    from detectron2_cops.config import add_cops_config

    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)  # no resize: targets comparable with the raw ground truth
    cfg.INPUT.RANDOM_FLIP = "none"
    for k, v in input_overrides.items():
        setattr(cfg.INPUT, k, v)
    return cfg


def _mapper(cfg, name, is_train=True):
    from detectron2_cops.data.dataset_mapper import COPSDatasetMapper

    cfg = cfg.clone()
    cfg.DATASETS.TRAIN = (name,)
    return COPSDatasetMapper(cfg, is_train)


def test_metadata_of_folder_and_builtin_datasets(d2, sample_name):
    DatasetCatalog, MetadataCatalog, cops_datasets = d2
    info = cops_datasets.get_panoptic_metadata(sample_name)
    assert len(info["thing_ids"]) == 80 and info["class_ids"] == list(range(133))
    assert info["thing_ids"] == list(range(80))
    assert info["label_divisor"] == 1000 and info["ignore_label"] == 255
    meta = MetadataCatalog.get(sample_name)
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert (
        len(meta.thing_classes) == len(meta.stuff_classes) == 133 and len(meta.stuff_colors) == 133
    )
    assert meta.thing_dataset_id_to_contiguous_id[1] == 0
    assert meta.stuff_dataset_id_to_contiguous_id[200] == 132
    assert meta.panoptic_json.endswith("panoptic.json") and os.path.isdir(meta.panoptic_root)
    # Detectron2's builtin panoptic datasets work unchanged (metadata only: no data here)
    city = cops_datasets.get_panoptic_metadata("cityscapes_fine_panoptic_train")
    assert city["thing_ids"] == list(range(11, 19)) and city["class_ids"] == list(range(19))
    assert city["label_divisor"] == 1000
    coco = cops_datasets.get_panoptic_metadata("coco_2017_val_panoptic")
    assert coco["thing_ids"] == list(range(80)) and len(coco["class_ids"]) == 133
    # the default registration happened on import, under $DETECTRON2_DATASETS
    assert "coco_panoptic_sample" in DatasetCatalog.list()
    folder = MetadataCatalog.get("coco_panoptic_sample").dataset_folder
    assert os.path.isabs(folder) and folder.endswith(os.sep + "coco_panoptic_sample")
    with pytest.raises(ValueError, match="not registered"):
        cops_datasets.get_panoptic_metadata("no_such_dataset_xyz")
    with pytest.raises(ValueError, match="already registered"):
        cops_datasets.register_coco_panoptic_folder(sample_name, "/somewhere/else")


def test_loader_dicts(d2, sample_name):
    DatasetCatalog, _, _ = d2
    dicts = DatasetCatalog.get(sample_name)
    assert [d["image_id"] for d in dicts] == [142238, 439180]
    assert dicts[0]["file_name"].endswith("images/000000142238.jpg")
    assert (dicts[0]["height"], dicts[0]["width"]) == (427, 640)
    s = dicts[1]["segments_info"]
    assert len(s) == 32 and s[0]["category_id"] == 0 and s[0]["isthing"] is True
    categories = json.loads((SAMPLE / "panoptic_coco_categories.json").read_text())
    assert [c["id"] for c in categories].index(193) == 125
    assert s[-1]["isthing"] is False and s[-1]["category_id"] == 125  # dataset id 193


_LOAD_SAMPLE = (
    "import detectron2_cops.data\n"
    "from detectron2.data import DatasetCatalog\n"
    "d = DatasetCatalog.get('coco_panoptic_sample')\n"
    "print(len(d), d[0]['file_name'])\n"
)


def _env_without_dataset_root(**extra):
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def test_default_registration_from_repository_root_in_subprocess():
    """From the repository root with no DETECTRON2_DATASETS, Detectron2's default root
    ``./datasets`` holds the bundled coco_panoptic_sample and it loads."""
    _need_detectron2()
    if not (REPO / "datasets" / "coco_panoptic_sample" / "panoptic.json").is_file():
        pytest.fail("datasets/coco_panoptic_sample is missing from the repository")
    res = subprocess.run(
        [sys.executable, "-c", _LOAD_SAMPLE],
        cwd=str(REPO),
        env=_env_without_dataset_root(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[0] == "2"
    assert Path(res.stdout.split()[1]).resolve() == (
        REPO / "datasets" / "coco_panoptic_sample" / "images" / "000000142238.jpg"
    ).resolve()


def test_default_registration_with_env_var_in_subprocess(tmp_path):
    """DETECTRON2_DATASETS=<another root> registers coco_panoptic_sample from that root."""
    _need_detectron2()
    _need_sample()
    os.symlink(SAMPLE, tmp_path / "coco_panoptic_sample")
    res = subprocess.run(
        [sys.executable, "-c", _LOAD_SAMPLE],
        cwd=str(tmp_path),
        env=_env_without_dataset_root(DETECTRON2_DATASETS=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[0] == "2"
    assert res.stdout.split()[1] == str(
        tmp_path / "coco_panoptic_sample" / "images" / "000000142238.jpg"
    )


def test_missing_folder_errors_when_used(d2, tmp_path):
    DatasetCatalog, _, cops_datasets = d2
    name = _unique()
    cops_datasets.register_coco_panoptic_folder(name, str(tmp_path / "nowhere"))
    folder = str(tmp_path / "nowhere" / name)
    with pytest.raises(FileNotFoundError, match=folder):
        DatasetCatalog.get(name)
    with pytest.raises(FileNotFoundError, match=folder):
        cops_datasets.get_panoptic_metadata(name)
    with pytest.raises(FileNotFoundError, match=folder):
        _mapper(_cfg(), name)
    # the folder appears later: metadata and dicts are filled in lazily
    os.makedirs(tmp_path / "nowhere")
    os.symlink(SAMPLE, tmp_path / "nowhere" / name)
    assert len(DatasetCatalog.get(name)) == 2
    assert len(cops_datasets.get_panoptic_metadata(name)["thing_ids"]) == 80


def test_unknown_category_in_json_names_file_and_id(d2, tmp_path):
    DatasetCatalog, _, cops_datasets = d2
    name = _unique()

    def edit(folder, data):
        data["annotations"][1]["segments_info"][3]["category_id"] = 999

    folder = _copy_sample(tmp_path, name, edit)
    cops_datasets.register_coco_panoptic_folder(name, str(tmp_path))
    with pytest.raises(ValueError) as e:
        DatasetCatalog.get(name)
    assert str(folder / "panoptic.json") in str(e.value) and "999" in str(e.value)
    assert "439180" in str(e.value)


def test_mapper_on_sample_exact_targets(d2, sample_name, sample_gt):
    DatasetCatalog, _, _ = d2
    images, thing_ids, categories = sample_gt
    mapper = _mapper(_cfg(), sample_name)
    dicts = DatasetCatalog.get(sample_name)
    gen = COPSTargetGenerator(thing_ids=thing_ids, class_ids=range(133), edge_distances=DISTANCES)
    for d, (pan, segments, ann) in zip(dicts, images):
        before = copy.deepcopy(d)
        out = mapper(d)
        assert d == before  # the input dict is not modified
        H, W = pan.shape
        h, w = grid_size(H, W)
        img = out["image"]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, H, W)
        ref = np.asarray(Image.open(d["file_name"]).convert("RGB"))[:, :, ::-1]  # BGR
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), ref)
        shapes = {
            "sem_seg": ((H, W), torch.int64),
            "sem_seg_weights": ((H, W), torch.float32),
            "panoptic_ids": ((h, w), torch.int64),
            "pixel_weights": ((h, w), torch.float32),
        }
        for k, (shape, dtype) in shapes.items():
            assert tuple(out[k].shape) == shape and out[k].dtype == dtype, k
        G = out["gt_masks"].shape[0]
        assert out["gt_masks"].dtype == torch.bool and tuple(out["gt_masks"].shape) == (G, h, w)
        assert out["gt_classes"].shape == (G,) and out["gt_classes"].dtype == torch.int64
        assert len(out["affinity_targets"]) == len(out["affinity_weights"]) == len(DISTANCES)
        for t, wt in zip(out["affinity_targets"], out["affinity_weights"]):
            assert tuple(t.shape) == tuple(wt.shape) == (2, h, w)
            assert t.dtype == wt.dtype == torch.float32
            assert set(t.unique().tolist()) <= {0.0, 1.0}
            assert set(wt.unique().tolist()) <= {0.0, 1.0, 4.0, 12.0}
        # value ranges
        sem = out["sem_seg"].numpy()
        assert set(np.unique(sem)) <= set(range(133)) | {255}
        assert set(np.unique(out["sem_seg_weights"].numpy())) <= {0.0, 1.0, 3.0}
        # same as the generator on the raw ground truth (no augmentation in this config)
        expected = gen(pan, segments)
        for k in (
            "sem_seg",
            "sem_seg_weights",
            "panoptic_ids",
            "crowd_ids",
            "gt_masks",
            "gt_classes",
            "pixel_weights",
        ):
            assert torch.equal(out[k], expected[k]), k

        # semantic labels straight from the json
        for s, raw in zip(segments, ann["segments_info"]):
            m = pan == s["id"]
            assert (sem[m] == s["category_id"]).all()
            is_thing = s["category_id"] in thing_ids
            small = is_thing and not s["iscrowd"] and raw["area"] < 4096
            assert (out["sem_seg_weights"].numpy()[m] == (3.0 if small else 1.0)).all()
        void = pan == 0
        assert (
            void.any()
            and (sem[void] == 255).all()
            and (out["sem_seg_weights"].numpy()[void] == 0).all()
        )

        # stride-4 panoptic ids: grid pixel (i, j) reads image pixel (min(4i+2,H-1), min(4j+2,W-1))
        P = out["panoptic_ids"].numpy()
        rows = np.minimum(4 * np.arange(h) + 2, H - 1)
        cols = np.minimum(4 * np.arange(w) + 2, W - 1)
        sub = pan[np.ix_(rows, cols)]
        assert ((P == -1) == (sub == 0)).all()
        np.testing.assert_array_equal(P[sub != 0] // 1000, sem[np.ix_(rows, cols)][sub != 0])
        # one id per segment and one segment per id
        pairs = set(zip(sub[sub != 0].tolist(), P[sub != 0].tolist()))
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})

        # crowd: ids listed, zero pixel weight, not in the masks, edges touching crowd ignored
        crowd_seg = [s for s in segments if s["iscrowd"]]
        assert crowd_seg and len(out["crowd_ids"]) == len(crowd_seg)
        crowd = np.isin(P, out["crowd_ids"].numpy())
        assert crowd.any()
        assert (out["pixel_weights"].numpy()[crowd] == 0).all()
        assert not out["gt_masks"].numpy()[:, crowd].any()
        np.testing.assert_array_equal(
            out["pixel_weights"].numpy(), ((P != -1) & ~crowd).astype(np.float32)
        )
        masks = out["gt_masks"].numpy()
        assert (masks.sum(0) == ((P != -1) & ~crowd)).all()  # masks partition the non-void grid
        for m, c in zip(masks, out["gt_classes"].numpy()):
            assert m.any() and (P[m] // 1000 == c).all()

        # affinities consistent with panoptic_ids through GridGraph.edges
        thing = (P >= 0) & np.isin(P // 1000, thing_ids)
        area = {s["id"]: (pan == s["id"]).sum() for s in segments}
        small = np.vectorize(lambda i: i > 0 and area[i] < 4096)(sub)
        labels, weights = brute_force_affinities(
            P, node_weights((P >= 0) & ~crowd, thing, small), DISTANCES, None
        )
        for a, b in zip(labels, out["affinity_targets"]):
            np.testing.assert_array_equal(a, b.numpy())
        for a, b in zip(weights, out["affinity_weights"]):
            np.testing.assert_array_equal(a, b.numpy())


def test_mapper_small_instances_on_second_image(d2, sample_name):
    """439180 has trucks above and people below SMALL_INSTANCE_AREA = 4096."""
    DatasetCatalog, _, _ = d2
    d = DatasetCatalog.get(sample_name)[1]
    out = _mapper(_cfg(), sample_name)(d)
    pan = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")))
    sw = out["sem_seg_weights"].numpy()
    big = [s for s in d["segments_info"] if s["isthing"] and s["area"] >= 4096 and not s["iscrowd"]]
    small = [
        s for s in d["segments_info"] if s["isthing"] and s["area"] < 4096 and not s["iscrowd"]
    ]
    assert big and small
    for s in big:
        assert (sw[pan == s["id"]] == 1.0).all()
    for s in small:
        assert (sw[pan == s["id"]] == 3.0).all()
    cfg = _cfg(SMALL_INSTANCE_AREA=100, SMALL_INSTANCE_WEIGHT=5)
    sw2 = _mapper(cfg, sample_name)(d)["sem_seg_weights"].numpy()
    for s in d["segments_info"]:
        expect = 5.0 if (s["isthing"] and not s["iscrowd"] and s["area"] < 100) else 1.0
        assert (sw2[pan == s["id"]] == expect).all()
    assert (sw2 == 5.0).any()


def test_mapper_ignore_crowd_in_semantic(d2, sample_name):
    DatasetCatalog, _, _ = d2
    d = DatasetCatalog.get(sample_name)[0]
    out = _mapper(_cfg(IGNORE_CROWD_IN_SEMANTIC=True), sample_name)(d)
    pan = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")))
    crowd = np.isin(pan, [s["id"] for s in d["segments_info"] if s["iscrowd"]])
    assert crowd.sum() == 24295
    assert (out["sem_seg"].numpy()[crowd] == 255).all()
    assert (out["sem_seg_weights"].numpy()[crowd] == 0).all()


def test_mapper_with_augmentation_is_consistent(d2, sample_name):
    DatasetCatalog, _, _ = d2
    from detectron2_cops.data.target_generator import grid_sample_coordinates as gsc

    cfg = _cfg(MIN_SIZE_TRAIN=(300, 333), MAX_SIZE_TRAIN=1000, RANDOM_FLIP="horizontal")
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [201, 254]
    mapper = _mapper(cfg, sample_name)
    np.random.seed(0)
    for d in DatasetCatalog.get(sample_name):
        out = mapper(d)
        _, H, W = out["image"].shape
        assert (H, W) == (201, 254)
        h, w = grid_size(H, W)
        P = out["panoptic_ids"].numpy()
        assert P.shape == (h, w) == (51, 64)
        rows, cols = gsc(H, W)
        sem_grid = out["sem_seg"].numpy()[np.ix_(rows, cols)]
        np.testing.assert_array_equal(P >= 0, sem_grid != 255)
        np.testing.assert_array_equal(P[P >= 0] // 1000, sem_grid[P >= 0])
        for t in out["affinity_targets"]:
            assert tuple(t.shape) == (2, h, w)


def test_mapper_test_mode(d2, sample_name):
    DatasetCatalog, _, _ = d2
    d = DatasetCatalog.get(sample_name)[0]
    out = _mapper(_cfg(), sample_name, is_train=False)(d)
    assert tuple(out["image"].shape) == (3, 800, 1199)  # MIN_SIZE_TEST 800, 640x427 -> 1199x800
    assert (out["height"], out["width"]) == (427, 640)
    assert "sem_seg" not in out and "affinity_targets" not in out
    assert out["image_id"] == 142238 and out["pan_seg_file_name"] == d["pan_seg_file_name"]


def test_mapper_grayscale_and_empty_image(d2, tmp_path):
    DatasetCatalog, _, cops_datasets = d2
    name = _unique()

    def edit(folder, data):
        img = Image.open(folder / "images" / "000000142238.jpg").convert("L")
        img.save(folder / "images" / "000000142238.jpg")
        # second image: no segments at all
        Image.fromarray(np.zeros((360, 640, 3), np.uint8)).save(
            folder / "panoptic" / "000000439180.png"
        )
        data["annotations"][1]["segments_info"] = []

    _copy_sample(tmp_path, name, edit)
    cops_datasets.register_coco_panoptic_folder(name, str(tmp_path))
    mapper = _mapper(_cfg(), name)
    gray, empty = DatasetCatalog.get(name)
    out = mapper(gray)
    img = out["image"]
    assert tuple(img.shape) == (3, 427, 640) and img.dtype == torch.uint8
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert out["gt_masks"].shape[0] == 17
    out = mapper(empty)
    assert tuple(out["image"].shape) == (3, 360, 640)
    assert (out["sem_seg"] == 255).all() and out["sem_seg_weights"].sum() == 0
    assert out["pixel_weights"].sum() == 0 and tuple(out["gt_masks"].shape) == (0, 90, 160)
    assert all(w.sum() == 0 for w in out["affinity_weights"])


def test_mapper_errors_name_the_file(d2, sample_name, tmp_path):
    DatasetCatalog, _, _ = d2
    mapper = _mapper(_cfg(), sample_name)
    d = DatasetCatalog.get(sample_name)[0]

    bad = copy.deepcopy(d)
    bad["segments_info"][2]["category_id"] = 500
    with pytest.raises(ValueError) as e:
        mapper(bad)
    assert d["pan_seg_file_name"] in str(e.value) and "500" in str(e.value)

    bad = copy.deepcopy(d)
    bad["file_name"] = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        mapper(bad)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    bad = copy.deepcopy(d)
    bad["file_name"] = str(garbage)
    with pytest.raises(ValueError, match="garbage.jpg"):
        mapper(bad)

    small_png = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(small_png)
    bad = copy.deepcopy(d)
    bad["pan_seg_file_name"] = str(small_png)
    with pytest.raises(ValueError, match="small.png"):
        mapper(bad)

    bad = copy.deepcopy(d)
    bad["segments_info"] = bad["segments_info"][1:]  # an id of the PNG is no longer listed
    with pytest.raises(ValueError, match="not in segments_info"):
        mapper(bad)


def test_malformed_categories_error_now_or_on_use(d2, tmp_path, monkeypatch):
    DatasetCatalog, _, cops_datasets = d2

    def edit(folder, data):
        (folder / "panoptic_coco_categories.json").write_text('[{"id": 1, "name": "person"}]')

    name = _unique()
    folder = _copy_sample(tmp_path, name, edit)
    cats = str(folder / "panoptic_coco_categories.json")
    with pytest.raises(ValueError, match="isthing") as e:
        cops_datasets.register_coco_panoptic_folder(name, str(tmp_path))
    assert cats in str(e.value)
    # registering all default folders (on import) never raises; the error comes on use
    monkeypatch.setattr(cops_datasets, "COCO_PANOPTIC_FOLDERS", (name,))
    assert cops_datasets.register_all_coco_panoptic_folders(str(tmp_path)) == [name]
    with pytest.raises(ValueError, match="isthing") as e:
        DatasetCatalog.get(name)
    assert cats in str(e.value)
    assert cops_datasets.register_all_coco_panoptic_folders(str(tmp_path)) == []  # already there
