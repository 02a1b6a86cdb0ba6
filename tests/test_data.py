"""Tests of detectron2_cops.data: RGB id encoding, COPS target generator, dataset registration,
evaluation subsets and the dataset mapper (the last three on the real COCO panoptic sample; they
need Detectron2). Each public entry point has one test of the bad input it refuses."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, SAMPLE, copy_sample, need_sample, snapshot, unique_name
from detectron2_cops.data.panoptic_utils import id2rgb, rgb2id
from detectron2_cops.data.target_generator import (
    COPSTargetGenerator,
    grid_sample_coordinates,
    grid_size,
)
from detectron2_cops.solvers.grid import GridGraph

DISTANCES = [1, 4, 16, 32, 64]


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
    need_sample()
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
    for bad in (np.array([[-1]]), np.array([[256**3]]), np.zeros((2, 2)), np.zeros(4, np.int64)):
        with pytest.raises(ValueError, match=r"\[H, W\] integer array with values in \[0, 16777215\]"):
            id2rgb(bad)


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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_ids=[0, 1, 2, 255]), "contain ignore_label 255"),
        (dict(thing_ids=[1, 7], class_ids=[0, 1, 7], ignore_label=7), "contain ignore_label 7"),
        (dict(thing_ids=[1.0]), r"thing_ids\[0\] must be an integer, got 1.0"),
        (dict(thing_ids=[True]), r"thing_ids\[0\] must be an integer, got True"),
        (dict(class_ids="012"), "class_ids must be a sequence of integers, got '012'"),
        (dict(class_ids=[-1, 1, 2]), r"class_ids\[0\] must be >= 0"),
        (dict(class_ids=[0, 1]), r"thing_ids must be a subset of class_ids; not in class_ids: \[2\]"),
        (dict(ignore_label=255.0), "ignore_label must be an integer"),
        (dict(label_divisor=1000.0), "label_divisor must be an integer"),
        (dict(instance_affinity_weight=-1), "instance_affinity_weight must be >= 0"),
        (dict(small_instance_area=float("nan")), "small_instance_area must be finite"),
        (dict(edge_distances=[1, 2], edge_sampling_intervals=[1]), "edge_sampling_intervals"),
    ],
)
def test_generator_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        COPSTargetGenerator(**{"thing_ids": [1, 2], **kwargs})


def _gen(**kw):
    return COPSTargetGenerator(
        thing_ids=[1, 2], class_ids=range(6), edge_distances=[1, 2], stride=2, **kw
    )


@pytest.mark.parametrize(
    "k, key, value, match",
    [
        (1, "category_id", 1.0, r"segments_info\[1\]\['category_id'\] must be an integer, got 1.0"),
        (1, "category_id", np.float64(1.0), "must be an integer"),
        (1, "category_id", "1", "must be an integer, got '1'"),
        (1, "category_id", True, "must be an integer, got True"),
        (1, "id", 3.0, r"segments_info\[1\]\['id'\] must be an integer, got 3.0"),
        (1, "id", np.float32(3.0), "must be an integer"),
        (0, "id", 0, r"segments_info\[0\]\['id'\] must be >= 1"),
        (1, "id", 7, r"duplicate segment ids \[7\]"),
        (0, "category_id", 77, r"segments_info\[0\] \(segment id 7\) has category_id 77"),
        (1, "iscrowd", "0", r"segments_info\[1\]\['iscrowd'\] \(0 or 1\) must be an integer"),
        (1, "iscrowd", 2, r"\['iscrowd'\] \(0 or 1\) must be <= 1"),
        (1, "iscrowd", 0.5, "must be an integer, got 0.5"),
        (1, "iscrowd", None, "must be an integer, got None"),
        (1, None, "not a dict", r"segments_info\[1\] must be a dict with 'id' and 'category_id'"),
        (-1, None, None, r"panoptic has segment ids \[11\] that are not in segments_info"),
        (None, "panoptic", np.float32, r"panoptic must be an \[H, W\] integer array"),
    ],
)
def test_generator_refuses_bad_ground_truth(k, key, value, match):
    """Coerced ids (3.0 would match the PNG's 3) and crowd flags ("0" is truthy) are refused."""
    pan, segments = _toy()
    bad = copy.deepcopy(segments)
    if key == "panoptic":
        pan = pan.astype(value)
    elif key is not None:
        bad[k][key] = value
    elif value is not None:
        bad[k] = value
    else:
        del bad[k]
    with pytest.raises(ValueError, match=match):
        _gen()(pan, bad)


def test_generator_accepts_numpy_ints_bools_and_ranges_exactly_as_python_ints():
    pan, segments = _toy()
    ref = _gen()(pan, segments)
    variants = [
        [dict(s, id=np.int64(s["id"]), category_id=np.int32(s["category_id"])) for s in segments],
        [dict(s, iscrowd=bool(s["iscrowd"])) for s in segments],
        [dict(s, iscrowd=np.bool_(s["iscrowd"])) for s in segments],
        [dict(s, iscrowd=np.uint8(s["iscrowd"])) for s in segments],
        [{k: v for k, v in s.items() if k != "iscrowd" or v} for s in segments],  # 0 by default
    ]
    for segs in variants:
        out = _gen()(pan, segs)
        assert out.keys() == ref.keys()
        for k, v in ref.items():
            if isinstance(v, list):
                assert all(torch.equal(a, b) for a, b in zip(v, out[k])), k
            else:
                assert torch.equal(v, out[k]), k
    assert ref["crowd_ids"].tolist() == [1003]
    gen = COPSTargetGenerator(
        thing_ids=np.array([1, 2]), class_ids=torch.arange(6), edge_distances=[1, 2], stride=2
    )
    assert gen.class_ids == frozenset(range(6)) and gen.thing_ids == frozenset({1, 2})
    assert torch.equal(gen(pan, segments)["panoptic_ids"], ref["panoptic_ids"])


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
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    need_sample()
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from detectron2_cops.data import datasets as cops_datasets

    return DatasetCatalog, MetadataCatalog, cops_datasets


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


def test_metadata_of_folder_and_builtin_datasets(d2, sample_dataset):
    DatasetCatalog, MetadataCatalog, cops_datasets = d2
    info = cops_datasets.get_panoptic_metadata(sample_dataset)
    assert len(info["thing_ids"]) == 80 and info["class_ids"] == list(range(133))
    assert info["thing_ids"] == list(range(80))
    assert info["label_divisor"] == 1000 and info["ignore_label"] == 255
    meta = MetadataCatalog.get(sample_dataset)
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


def test_registration_and_metadata_refuse_bad_datasets(d2, sample_dataset):
    DatasetCatalog, MetadataCatalog, cops_datasets = d2
    with pytest.raises(ValueError, match="'coco_panoptic_smaple' is not registered.*coco_panoptic_sample"):
        cops_datasets.get_panoptic_metadata("coco_panoptic_smaple")
    with pytest.raises(ValueError, match=f"'{sample_dataset}' is already registered from"):
        cops_datasets.register_coco_panoptic_folder(sample_dataset, "/somewhere/else")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        cops_datasets.register_coco_panoptic_folder("", "/somewhere")
    layouts = [
        ({10: 0}, {20: 1}, {}, None),  # valid
        ({}, {}, {"stuff_classes": ["a"]}, "no_maps"),  # not panoptic
        ({10: 0}, {20: 0}, {}, "overlap"),
        ({10: 0}, {20: 255}, {}, "ignore"),
        ({10: 0}, {20: 1000}, {}, "divisor"),
    ]
    for things, stuff, extra, problem in layouts:
        name = unique_name("cops_layout")
        DatasetCatalog.register(name, lambda: [])
        if problem == "no_maps":
            MetadataCatalog.get(name).set(**extra)
            with pytest.raises(ValueError, match=f"'{name}' is not a panoptic dataset"):
                cops_datasets.get_panoptic_metadata(name)
            continue
        MetadataCatalog.get(name).set(
            thing_dataset_id_to_contiguous_id=things, stuff_dataset_id_to_contiguous_id=stuff
        )
        if problem is None:
            assert cops_datasets.get_panoptic_metadata(name)["class_ids"] == [0, 1]
        else:
            with pytest.raises(ValueError, match=f"'{name}': the contiguous class ids of things"):
                cops_datasets.get_panoptic_metadata(name)


def test_loader_dicts(d2, sample_dataset):
    DatasetCatalog, _, _ = d2
    dicts = DatasetCatalog.get(sample_dataset)
    assert [d["image_id"] for d in dicts] == [142238, 439180]
    assert dicts[0]["file_name"].endswith("images/000000142238.jpg")
    assert (dicts[0]["height"], dicts[0]["width"]) == (427, 640)
    s = dicts[1]["segments_info"]
    assert len(s) == 32 and s[0]["category_id"] == 0 and s[0]["isthing"] is True
    categories = json.loads((SAMPLE / "panoptic_coco_categories.json").read_text())
    assert [c["id"] for c in categories].index(193) == 125
    assert s[-1]["isthing"] is False and s[-1]["category_id"] == 125  # dataset id 193


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda anns: anns[1].pop("segments_info"), r"annotations\[1\] must be a dict with"),
        (lambda anns: anns[1].pop("file_name"), r"annotations\[1\] must be a dict with"),
        (lambda anns: anns[1].update(segments_info={"id": 1}), r"annotations\[1\] must be"),
        (lambda anns: anns[1]["segments_info"][2].pop("id"), r"annotations\[1\] must be"),
        (lambda anns: anns.append([1, 2]), r"annotations\[2\] must be a dict with"),
        (
            lambda anns: anns[1]["segments_info"][3].update(category_id=999),
            r"image 439180 \(000000439180.png\) has segments of unknown category ids \[999\]",
        ),
        (lambda anns: anns.clear(), "has no 'annotations' list"),
    ],
)
def test_loader_refuses_malformed_annotations_naming_the_json(d2, register_sample_copy, edit, match):
    DatasetCatalog, _, _ = d2
    name, folder = register_sample_copy(lambda _, data: edit(data["annotations"]))
    with pytest.raises(ValueError, match=match) as e:
        DatasetCatalog.get(name)
    assert str(folder / "panoptic.json") in str(e.value)


def test_malformed_categories_error_now_or_on_use(d2, tmp_path, monkeypatch):
    DatasetCatalog, _, cops_datasets = d2

    def edit(folder, data):
        (folder / "panoptic_coco_categories.json").write_text('[{"id": 1, "name": "person"}]')

    name = unique_name()
    folder = copy_sample(tmp_path / name, edit)
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


def test_missing_folder_errors_when_used(d2, tmp_path):
    DatasetCatalog, _, cops_datasets = d2
    name = unique_name()
    cops_datasets.register_coco_panoptic_folder(name, str(tmp_path / "nowhere"))
    folder = str(tmp_path / "nowhere" / name)
    with pytest.raises(FileNotFoundError, match=f"'{folder}', which does not exist"):
        DatasetCatalog.get(name)
    with pytest.raises(FileNotFoundError, match=f"'{folder}', which does not exist"):
        cops_datasets.get_panoptic_metadata(name)
    # the folder appears later: metadata and dicts are filled in lazily
    os.makedirs(tmp_path / "nowhere")
    os.symlink(SAMPLE, tmp_path / "nowhere" / name)
    assert len(DatasetCatalog.get(name)) == 2
    assert len(cops_datasets.get_panoptic_metadata(name)["thing_ids"]) == 80


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
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
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
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    need_sample()
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


def test_mapper_on_sample_exact_targets(d2, sample_dataset, sample_gt):
    DatasetCatalog, _, _ = d2
    images, thing_ids, categories = sample_gt
    mapper = _mapper(_cfg(), sample_dataset)
    dicts = DatasetCatalog.get(sample_dataset)
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


def test_mapper_small_instances_on_second_image(d2, sample_dataset):
    """439180 has trucks above and people below SMALL_INSTANCE_AREA = 4096."""
    DatasetCatalog, _, _ = d2
    d = DatasetCatalog.get(sample_dataset)[1]
    out = _mapper(_cfg(), sample_dataset)(d)
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
    sw2 = _mapper(cfg, sample_dataset)(d)["sem_seg_weights"].numpy()
    for s in d["segments_info"]:
        expect = 5.0 if (s["isthing"] and not s["iscrowd"] and s["area"] < 100) else 1.0
        assert (sw2[pan == s["id"]] == expect).all()
    assert (sw2 == 5.0).any()


def test_mapper_ignore_crowd_in_semantic(d2, sample_dataset):
    DatasetCatalog, _, _ = d2
    d = DatasetCatalog.get(sample_dataset)[0]
    out = _mapper(_cfg(IGNORE_CROWD_IN_SEMANTIC=True), sample_dataset)(d)
    pan = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")))
    crowd = np.isin(pan, [s["id"] for s in d["segments_info"] if s["iscrowd"]])
    assert crowd.sum() == 24295
    assert (out["sem_seg"].numpy()[crowd] == 255).all()
    assert (out["sem_seg_weights"].numpy()[crowd] == 0).all()


def test_mapper_with_augmentation_is_consistent(d2, sample_dataset):
    DatasetCatalog, _, _ = d2
    from detectron2_cops.data.target_generator import grid_sample_coordinates as gsc

    cfg = _cfg(MIN_SIZE_TRAIN=(300, 333), MAX_SIZE_TRAIN=1000, RANDOM_FLIP="horizontal")
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [201, 254]
    mapper = _mapper(cfg, sample_dataset)
    np.random.seed(0)
    for d in DatasetCatalog.get(sample_dataset):
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


def test_mapper_test_mode(d2, sample_dataset):
    DatasetCatalog, _, _ = d2
    d = DatasetCatalog.get(sample_dataset)[0]
    out = _mapper(_cfg(), sample_dataset, is_train=False)(d)
    assert tuple(out["image"].shape) == (3, 800, 1199)  # MIN_SIZE_TEST 800, 640x427 -> 1199x800
    assert (out["height"], out["width"]) == (427, 640)
    assert "sem_seg" not in out and "affinity_targets" not in out
    assert out["image_id"] == 142238 and out["pan_seg_file_name"] == d["pan_seg_file_name"]


def test_mapper_grayscale_and_empty_image(d2, register_sample_copy):
    DatasetCatalog, _, _ = d2

    def edit(folder, data):
        img = Image.open(folder / "images" / "000000142238.jpg").convert("L")
        img.save(folder / "images" / "000000142238.jpg")
        # second image: no segments at all
        Image.fromarray(np.zeros((360, 640, 3), np.uint8)).save(
            folder / "panoptic" / "000000439180.png"
        )
        data["annotations"][1]["segments_info"] = []

    name, _ = register_sample_copy(edit)
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


def test_mapper_errors_name_the_file(d2, sample_dataset, tmp_path):
    DatasetCatalog, _, _ = d2
    mapper = _mapper(_cfg(), sample_dataset)
    d = DatasetCatalog.get(sample_dataset)[0]
    small_png = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(small_png)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    cases = [
        ("segments_info", d["segments_info"][1:], ValueError, "not in segments_info"),
        ("pan_seg_file_name", str(small_png), ValueError, "small.png' has size 10x10"),
        ("file_name", str(tmp_path / "missing.jpg"), FileNotFoundError, "missing.jpg"),
        ("file_name", str(garbage), OSError, "garbage.jpg"),
    ]
    for key, value, error, match in cases:
        with pytest.raises(error, match=match) as e:
            mapper(dict(copy.deepcopy(d), **{key: value}))
        if key == "segments_info":  # the target generator's error names the PNG
            assert d["pan_seg_file_name"] in str(e.value)


# ----------------------------------------------------------------------------- subsets
@pytest.fixture
def subsets(d2):
    from detectron2_cops.data import subsets

    return subsets


def test_subset_refuses_the_base_datasets_own_folders(d2, subsets, register_sample_copy, tmp_path):
    DatasetCatalog, _, _ = d2
    base, folder = register_sample_copy()
    before = snapshot(tmp_path)
    link = tmp_path / "link_to_base"
    os.symlink(folder, link)
    targets = [
        folder,  # would overwrite the base panoptic.json
        folder / "images",
        folder / "panoptic",
        folder / "panoptic" / "sub",
        tmp_path,  # contains the base folder
        link,  # the base folder through a link
    ]
    for target in targets:
        sub = unique_name("cops_sub")
        with pytest.raises(ValueError, match="base dataset") as e:
            subsets.register_panoptic_subset(base, sub, [0], str(target))
        assert str(target) in str(e.value) and base in str(e.value)
        assert sub not in DatasetCatalog.list()
    os.remove(link)
    assert snapshot(tmp_path) == before
    assert len(DatasetCatalog.get(base)) == 2


def test_subset_refuses_panoptic_json_linked_to_the_base_json(subsets, register_sample_copy, tmp_path):
    base, folder = register_sample_copy()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(folder / "panoptic.json", out / "panoptic.json")
    before = (folder / "panoptic.json").read_bytes()
    with pytest.raises(ValueError, match="base dataset") as e:
        subsets.register_panoptic_subset(base, unique_name("cops_sub"), [0], str(out))
    assert f"'{out / 'panoptic.json'}'" in str(e.value)
    assert str(folder / "panoptic.json") in str(e.value)  # the real path it resolves to
    assert (folder / "panoptic.json").read_bytes() == before
    assert os.path.islink(out / "panoptic.json")


@pytest.mark.parametrize(
    "name, indices, folder, match",
    [
        ("base", [0], "a", "base dataset's name"),
        ("other", [0], "a", "is already registered"),
        ("", [0], "a", "name must be a non-empty string"),
        ("sub", [0.7], "a", r"indices\[0\] must be an integer, got 0.7"),
        ("sub", [1.0], "a", r"indices\[0\] must be an integer, got 1.0"),
        ("sub", [True], "a", r"indices\[0\] must be an integer, got True"),
        ("sub", np.array([0.0]), "a", r"indices\[0\] must be an integer"),
        ("sub", "0", "a", "indices must be a sequence of integers"),
        ("sub", [-1], "a", r"indices\[0\] must be >= 0"),
        ("sub", [], "a", r"indices must be distinct positions in \[0, 2\)"),
        ("sub", [0, 0], "a", r"indices must be distinct positions in \[0, 2\)"),
        ("sub", [2], "a", r"indices must be distinct positions in \[0, 2\)"),
        ("sub", [0], "", "folder must be a non-empty path"),
        ("sub", [0], "file", "File exists"),
    ],
)
def test_subset_refuses_bad_arguments_and_writes_nothing(
    d2, subsets, register_sample_copy, tmp_path, name, indices, folder, match
):
    DatasetCatalog, MetadataCatalog, _ = d2
    base, _ = register_sample_copy()
    other, _ = register_sample_copy(prefix="cops_other")
    name = {"base": base, "other": other, "sub": unique_name("cops_sub")}.get(name, name)
    (tmp_path / "file").write_text("a file in place of the folder")
    before = snapshot(tmp_path)
    with pytest.raises((ValueError, OSError), match=match):
        subsets.register_panoptic_subset(base, name, indices, str(tmp_path / folder) if folder else "")
    assert snapshot(tmp_path) == before
    assert len(DatasetCatalog.get(base)) == len(DatasetCatalog.get(other)) == 2
    assert "subset_of" not in MetadataCatalog.get(other).as_dict()
    assert name in (base, other) or name not in DatasetCatalog.list()


def test_subset_valid_use_and_reregistration(d2, subsets, register_sample_copy, tmp_path):
    DatasetCatalog, MetadataCatalog, _ = d2
    base, _ = register_sample_copy()
    sub = unique_name("cops_sub")
    out = tmp_path / "out"
    assert subsets.register_panoptic_subset(base, sub, np.array([1]), str(out)) == sub
    assert [d["image_id"] for d in DatasetCatalog.get(sub)] == [439180]
    assert MetadataCatalog.get(sub).panoptic_json == str(out / "panoptic.json")
    # re-registering the subset (another image, same folder) replaces it, as documented
    subsets.register_panoptic_subset(base, sub, [np.int64(0)], str(out))
    assert [d["image_id"] for d in DatasetCatalog.get(sub)] == [142238]
    anns = json.loads((out / "panoptic.json").read_text())["annotations"]
    assert [a["image_id"] for a in anns] == [142238]
    # another subset may not take over the folder of a registered one (its json would change)
    with pytest.raises(ValueError, match=f"registered dataset '{sub}'"):
        subsets.register_panoptic_subset(base, unique_name("cops_sub"), [1], str(out))
    assert json.loads((out / "panoptic.json").read_text())["annotations"] == anns
    # a subset of the subset: then the first one cannot be replaced by a different subset
    subsub = subsets.register_panoptic_subset(sub, unique_name("cops_subsub"), [0], str(tmp_path / "s"))
    with pytest.raises(ValueError, match="is the base dataset of the subsets"):
        subsets.register_panoptic_subset(base, sub, [1], str(out))
    subsets.register_panoptic_subset(base, sub, [0], str(out))  # identical: fine
    assert [d["image_id"] for d in DatasetCatalog.get(subsub)] == [142238]
    with pytest.raises(ValueError, match="base dataset"):  # the subset's own folder is protected
        subsets.register_panoptic_subset(sub, unique_name("cops_sub"), [0], str(out))


# ------------------------------------------------------------------ subsets with Cityscapes gt
@pytest.fixture
def city_base(d2, tmp_path):
    """A registered Cityscapes-like base dataset (metadata gt_dir) with two frames."""
    DatasetCatalog, MetadataCatalog, _ = d2
    root = tmp_path / "cs"
    stems = ["aachen_000000_000019", "bonn_000001_000019"]
    records, annotations = [], []
    for stem in stems:
        city = stem.split("_")[0]
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        for suffix in ("_gtFine_instanceIds.png", "_gtFine_labelIds.png"):
            (root / "gtFine" / "val" / city / (stem + suffix)).write_bytes(b"png")
        records.append(
            {
                "file_name": str(root / "leftImg8bit" / "val" / city / (stem + "_leftImg8bit.png")),
                "image_id": stem,
                "pan_seg_file_name": str(root / "gtFine" / "pan" / (stem + "_gtFine_panoptic.png")),
                "segments_info": [],
            }
        )
        annotations.append(
            {"image_id": stem, "file_name": stem + "_gtFine_panoptic.png", "segments_info": []}
        )
    (root / "gtFine" / "pan").mkdir()
    pan_json = root / "gtFine" / "pan.json"
    pan_json.write_text(json.dumps({"annotations": annotations, "categories": []}))
    name = unique_name("cops_city")
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).set(
        panoptic_json=str(pan_json),
        panoptic_root=str(root / "gtFine" / "pan"),
        image_root=str(root / "leftImg8bit" / "val"),
        gt_dir=str(root / "gtFine" / "val"),
    )
    yield name, root, stems
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_subset_never_deletes_a_gt_folder_it_did_not_write(d2, subsets, city_base, tmp_path):
    DatasetCatalog, _, _ = d2
    base, _, _ = city_base
    out = tmp_path / "out"
    (out / "gt" / "mine").mkdir(parents=True)
    (out / "gt" / "mine" / "precious.txt").write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / subsets.GT_MARKER).write_text("")  # a marker behind a link
    sub = unique_name("cops_sub")
    for replace_gt_with_link in (False, True):
        if replace_gt_with_link:
            (out / "gt" / "mine" / "precious.txt").unlink()
            (out / "gt" / "mine").rmdir()
            os.rmdir(out / "gt")
            os.symlink(tmp_path / "elsewhere", out / "gt")
        before = snapshot(tmp_path)
        with pytest.raises(ValueError, match="not a folder written by register_panoptic_subset") as e:
            subsets.register_panoptic_subset(base, sub, [0], str(out))
        assert str(out / "gt") in str(e.value)
        assert snapshot(tmp_path) == before  # nothing deleted or followed, no panoptic.json
        assert sub not in DatasetCatalog.list()


def test_subset_replaces_its_own_gt_links(d2, subsets, city_base, tmp_path):
    DatasetCatalog, MetadataCatalog, _ = d2
    base, root, stems = city_base
    out = tmp_path / "out"
    sub = subsets.register_panoptic_subset(base, unique_name("cops_sub"), [0], str(out))
    gt = Path(MetadataCatalog.get(sub).gt_dir)
    assert gt == out / "gt" and (gt / subsets.GT_MARKER).is_file()
    assert sorted(p.name for p in gt.rglob("*_instanceIds.png")) == [
        stems[0] + "_gtFine_instanceIds.png"
    ]
    subsets.register_panoptic_subset(base, sub, [1], str(out))
    links = sorted(p.relative_to(gt) for p in gt.rglob("*.png"))
    assert links == [
        Path("bonn") / (stems[1] + "_gtFine_instanceIds.png"),
        Path("bonn") / (stems[1] + "_gtFine_labelIds.png"),
    ]
    assert all(os.path.islink(gt / p) for p in links)
    assert (root / "gtFine" / "val" / "aachen" / (stems[0] + "_gtFine_instanceIds.png")).is_file()
    assert [d["image_id"] for d in DatasetCatalog.get(sub)] == [stems[1]]


def test_subset_of_cityscapes_refuses_missing_gt_and_gt_dir_and_writes_nothing(
    subsets, city_base, tmp_path
):
    base, root, stems = city_base
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="lies inside gt_dir"):
        subsets.register_panoptic_subset(
            base, unique_name("cops_sub"), [0], str(root / "gtFine" / "val" / "x")
        )
    with pytest.raises(ValueError, match="base dataset"):
        subsets.register_panoptic_subset(base, unique_name("cops_sub"), [0], str(root / "gtFine"))
    assert snapshot(tmp_path) == before
    (root / "gtFine" / "val" / "bonn" / (stems[1] + "_gtFine_instanceIds.png")).unlink()
    with pytest.raises(FileNotFoundError, match=stems[1]):
        subsets.register_panoptic_subset(base, unique_name("cops_sub"), [0, 1], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
