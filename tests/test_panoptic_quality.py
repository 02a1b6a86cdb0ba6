"""Tests of the exact panoptic quality (detectron2_cops.layers.panoptic_quality).

The reference is cityscapesscripts' COCO-panoptic PQ (``pq_compute_single_core``, the same
algorithm as panopticapi), run on COCO-panoptic PNG + segments_info written to a temp dir.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2_cops.layers.panoptic_quality import panoptic_quality

csp = pytest.importorskip(
    "cityscapesscripts.evaluation.evalPanopticSemanticLabeling",
    reason="cityscapesscripts (the PQ reference implementation) is not installed",
)
Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to write reference PNGs")
ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is not installed")


def _datasets_root() -> Path:
    """Root of the bundled sample (datasets/ in the repository; COPS_TEST_DATASETS overrides)."""
    env = os.environ.get("COPS_TEST_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "datasets"


# --------------------------------------------------------------------------- reference harness
def _to_coco(id_map, crowd_ids, label_divisor, void_id, name):
    """Our id map -> (RGB PNG array, segments_info) with category_id = class + 1."""
    ids = np.unique(id_map)
    ids = ids[ids != void_id]
    seg = np.zeros(id_map.shape, dtype=np.int64)
    infos = []
    for k, i in enumerate(ids.tolist(), start=1):
        mask = id_map == i
        seg[mask] = k
        infos.append({"id": k, "category_id": i // label_divisor + 1, "iscrowd": int(i in crowd_ids),
                      "area": int(mask.sum())})
    rgb = np.stack([seg % 256, (seg // 256) % 256, seg // 65536], axis=-1).astype(np.uint8)
    return rgb, {"file_name": name, "image_id": name, "segments_info": infos}


def reference_pq(tmp_path, preds, gts, crowds, label_divisor, thing_classes, void_id):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(exist_ok=True)
    pred_dir.mkdir(exist_ok=True)
    classes = set()
    annotation_set = []
    for n, (p, g, cr) in enumerate(zip(preds, gts, crowds)):
        name = f"img{n}.png"
        g_rgb, g_ann = _to_coco(g, set(cr), label_divisor, void_id, name)
        p_rgb, p_ann = _to_coco(p, set(), label_divisor, void_id, name)
        Image.fromarray(g_rgb).save(gt_dir / name)
        Image.fromarray(p_rgb).save(pred_dir / name)
        annotation_set.append((g_ann, p_ann))
        classes.update(s["category_id"] - 1 for s in g_ann["segments_info"] + p_ann["segments_info"])
    categories = {c + 1: {"id": c + 1, "name": str(c), "isthing": int(c in thing_classes)} for c in classes}
    with contextlib.redirect_stdout(io.StringIO()):
        stat = csp.pq_compute_single_core(0, annotation_set, str(gt_dir), str(pred_dir), categories)
    out = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            out[name], per_class = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:  # cityscapesscripts divides by n = 0 for an empty set
            out[name], per_class = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, {}
        if name == "All":
            out["per_class"] = {k - 1: v for k, v in per_class.items()}
            out["stats"] = {k - 1: stat.pq_per_cat[k] for k in categories}
    return out


def assert_matches_reference(ours, ref):
    for name in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            assert ours[name][key] == pytest.approx(ref[name][key], abs=1e-9), (name, key)
        assert ours[name]["n"] == ref[name]["n"], name
    assert set(ours["per_class"]) == set(ref["stats"])
    for c, st in ref["stats"].items():
        mine = ours["per_class"][c]
        assert (mine["tp"], mine["fp"], mine["fn"]) == (st.tp, st.fp, st.fn), c
        assert mine["iou"] == pytest.approx(st.iou, abs=1e-9), c
        for key in ("pq", "sq", "rq"):
            assert mine[key] == pytest.approx(ref["per_class"][c][key], abs=1e-9), (c, key)


# --------------------------------------------------------------------------- random id maps
LD = 1000
THINGS = (0, 1, 2)
STUFF = (3, 4, 5)


def random_gt(rng, h=48, w=56, void_id=-1, class_offset=0):
    """Random gt: blocky stuff, rectangles of things, void rectangles, <= 1 crowd per class."""
    coarse = rng.choice(STUFF, size=(4, 4))
    stuff = np.kron(coarse, np.ones((h // 4 + 1, w // 4 + 1), dtype=np.int64))[:h, :w]
    gt = (stuff + class_offset) * LD
    inst = 1
    for _ in range(rng.integers(4, 12)):
        c = int(rng.choice(THINGS)) + class_offset
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        hh, ww = rng.integers(3, 16), rng.integers(3, 16)
        gt[y:y + hh, x:x + ww] = c * LD + inst
        inst += 1
    for _ in range(rng.integers(0, 4)):
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        gt[y:y + rng.integers(2, 10), x:x + rng.integers(2, 10)] = void_id
    crowd = set()
    for c in THINGS:
        if rng.random() < 0.5:
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            cid = (c + class_offset) * LD + 999
            gt[y:y + rng.integers(4, 14), x:x + rng.integers(4, 14)] = cid
            crowd.add(cid)
    present = set(np.unique(gt).tolist())
    return gt, sorted(crowd & present)


def segment_ids(m, void_id):
    ids = np.unique(m)
    return ids[ids != void_id].tolist()


def perturb(rng, gt, void_id, kinds, class_offset=0):
    """Prediction = perturbed gt (the 'kinds' are applied in order)."""
    pred = gt.copy()
    next_inst = 500  # instance ids away from the gt ones (< 999, the crowd instance id)
    for kind in kinds:
        ids = [i for i in segment_ids(pred, void_id)]
        things = [i for i in ids if i // LD - class_offset in THINGS]
        if kind == "shift":
            pred = np.roll(pred, shift=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
        elif kind == "split":  # split things along a vertical line
            for i in things:
                ys, xs = np.nonzero(pred == i)
                if xs.size < 4:
                    continue
                cut = int(rng.integers(xs.min(), xs.max() + 1))
                sel = (pred == i) & (np.arange(pred.shape[1])[None, :] >= cut)
                pred[sel] = (i // LD) * LD + next_inst
                next_inst += 1
        elif kind == "merge":  # merge pairs of things of the same class
            by_class = {}
            for i in things:
                by_class.setdefault(i // LD, []).append(i)
            for members in by_class.values():
                for a, b in zip(members[0::2], members[1::2]):
                    pred[pred == b] = a
        elif kind == "wrong_class":
            for i in ids:
                if rng.random() < 0.3:
                    new_c = int(rng.choice(THINGS + STUFF)) + class_offset
                    pred[pred == i] = new_c * LD + (i % LD if new_c - class_offset in THINGS else 0)
        elif kind == "drop":
            for i in ids:
                if rng.random() < 0.25:
                    pred[pred == i] = void_id
        elif kind == "erode":
            out = np.full_like(pred, void_id)
            for i in ids:
                mask = ndimage.binary_erosion(pred == i, iterations=int(rng.integers(1, 3)))
                out[mask] = i
            pred = out
        elif kind == "void_heavy":  # predictions lying mostly on gt void / crowd, or half on it
            ignore = gt == void_id
            ys, xs = np.nonzero(ignore)
            for _ in range(3):
                if ys.size == 0:
                    break
                k = int(rng.integers(ys.size))
                y0, x0 = max(ys[k] - 2, 0), max(xs[k] - 2, 0)
                c = int(rng.choice(THINGS)) + class_offset
                pred[y0:y0 + int(rng.integers(2, 7)), x0:x0 + int(rng.integers(2, 7))] = c * LD + next_inst
                next_inst += 1
            for cid in segment_ids(gt, void_id):
                if cid % LD == 999:  # crowd: predict an instance of the crowd's class on part of it
                    ys_c, xs_c = np.nonzero(gt == cid)
                    sl = (slice(ys_c.min(), ys_c.max() + 1), slice(xs_c.min(), xs_c.min() + 3))
                    pred[sl] = (cid // LD) * LD + next_inst
                    next_inst += 1
        elif kind == "noise":
            flip = rng.random(pred.shape) < 0.05
            pred[flip] = void_id
        elif kind == "stuff_swap":  # swap two stuff classes everywhere
            a, b = (np.asarray(STUFF) + class_offset)[rng.permutation(3)[:2]]
            sa, sb = pred == a * LD, pred == b * LD
            pred[sa], pred[sb] = b * LD, a * LD
        else:
            raise AssertionError(kind)
    return pred


KINDS = ["shift", "split", "merge", "wrong_class", "drop", "erode", "void_heavy", "noise", "stuff_swap"]


def random_case(seed):
    rng = np.random.default_rng(seed)
    void_id, offset = [(-1, 0), (0, 1), (-7, 0), (999999, 0)][seed % 4]
    gt, crowd = random_gt(rng, void_id=void_id, class_offset=offset)
    kinds = [KINDS[seed % len(KINDS)]] + list(rng.choice(KINDS, size=int(rng.integers(0, 3))))
    pred = perturb(rng, gt, void_id, kinds, class_offset=offset)
    things = tuple(c + offset for c in THINGS)
    return pred, gt, crowd, void_id, things


@pytest.mark.parametrize("seed", range(24))
def test_random_single_image_matches_cityscapesscripts(tmp_path, seed):
    pred, gt, crowd, void_id, things = random_case(seed)
    as_torch = seed % 3 == 0
    ours = panoptic_quality(
        torch.from_numpy(pred) if as_torch else pred.astype(np.int32),
        torch.from_numpy(gt) if as_torch else gt,
        label_divisor=LD, thing_classes=things, gt_crowd_ids=crowd, void_id=void_id,
    )
    ref = reference_pq(tmp_path, [pred], [gt], [crowd], LD, things, void_id)
    assert ref["All"]["n"] > 0
    assert_matches_reference(ours, ref)


@pytest.mark.parametrize("seed", range(100, 104))
def test_random_multi_image_accumulation_matches_cityscapesscripts(tmp_path, seed):
    cases = [random_case(seed * 10 + k) for k in range(3)]
    # Bring all images to one void id / class offset (the case generator cycles them).
    preds, gts, crowds = [], [], []
    for pred, gt, crowd, void_id, things in cases:
        offset = things[0]
        pv, gv = pred == void_id, gt == void_id
        pred = pred - offset * LD
        gt = gt - offset * LD
        pred[pv], gt[gv] = -1, -1
        preds.append(pred)
        gts.append(gt)
        crowds.append([c - offset * LD for c in crowd])
    ours = panoptic_quality(preds, gts, label_divisor=LD, thing_classes=THINGS, gt_crowd_ids=crowds)
    ref = reference_pq(tmp_path, preds, gts, crowds, LD, THINGS, -1)
    assert_matches_reference(ours, ref)
    # Accumulating is not the mean of per-image PQs.
    per_image = [panoptic_quality(p, g, label_divisor=LD, thing_classes=THINGS, gt_crowd_ids=c)
                 for p, g, c in zip(preds, gts, crowds)]
    for c in ours["per_class"]:
        assert ours["per_class"][c]["tp"] == sum(r["per_class"].get(c, {"tp": 0})["tp"] for r in per_image)


# --------------------------------------------------------------------------- real COCO images
def load_coco_sample(label_divisor=1000):
    root = _datasets_root() / "coco_panoptic_sample"
    if not (root / "panoptic.json").is_file():
        pytest.fail(f"the bundled COCO panoptic sample is missing at {root} (datasets/coco_panoptic_sample "
                    "in the repository; COPS_TEST_DATASETS overrides its root)")
    meta = json.loads((root / "panoptic.json").read_text())
    cat_ids = sorted(c["id"] for c in meta["categories"])
    contiguous = {cid: k for k, cid in enumerate(cat_ids)}
    things = tuple(contiguous[c["id"]] for c in meta["categories"] if c["isthing"])
    images = []
    for ann in meta["annotations"]:
        rgb = np.asarray(Image.open(root / "panoptic" / ann["file_name"]).convert("RGB"), dtype=np.int64)
        coco = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        ours = np.full(coco.shape, -1, dtype=np.int64)
        crowd = []
        for k, seg in enumerate(ann["segments_info"], start=1):
            pid = contiguous[seg["category_id"]] * label_divisor + k
            mask = coco == seg["id"]
            assert mask.sum() == seg["area"]
            ours[mask] = pid
            if seg["iscrowd"]:
                crowd.append(pid)
        assert set(np.unique(coco).tolist()) <= {0} | {s["id"] for s in ann["segments_info"]}
        images.append((ours, crowd))
    return images, things


def _touching_pairs(m, void_id=-1):
    a = np.concatenate([m[:, :-1].ravel(), m[:-1, :].ravel()])
    b = np.concatenate([m[:, 1:].ravel(), m[1:, :].ravel()])
    sel = (a != b) & (a != void_id) & (b != void_id)
    return set(zip(a[sel].tolist(), b[sel].tolist()))


def perturb_real(gt, mode, rng, things, ld=1000):
    pred = gt.copy()
    ids = segment_ids(gt, -1)
    if mode == "erode":
        pred[:] = -1
        for i in ids:
            pred[ndimage.binary_erosion(gt == i, iterations=int(rng.integers(1, 6)))] = i
    elif mode == "shift":
        pred = np.roll(gt, shift=(7, -11), axis=(0, 1))
    elif mode == "swap_classes":
        for i in ids:
            if rng.random() < 0.3:
                pred[gt == i] = int(rng.integers(0, 133)) * ld + i % ld
    elif mode == "drop":
        for i in ids:
            if rng.random() < 0.3:
                pred[gt == i] = -1
    elif mode == "merge":  # merge touching segments of the same class
        for a, b in sorted(_touching_pairs(gt)):
            if a // ld == b // ld:
                pred[pred == b] = pred[gt == a][0]
    elif mode == "split":  # split every segment into left and right halves
        for i in ids:
            ys, xs = np.nonzero(gt == i)
            mid = (xs.min() + xs.max()) // 2
            pred[(gt == i) & (np.arange(gt.shape[1])[None] > mid)] = (i // ld) * ld + 900 + i % 100
    elif mode == "mixed":
        pred = perturb_real(perturb_real(gt, "erode", rng, things), "swap_classes", rng, things)
        pred = np.roll(pred, shift=(2, 3), axis=(0, 1))
        pred[rng.random(pred.shape) < 0.02] = -1
    else:
        raise AssertionError(mode)
    return pred


REAL_MODES = ["erode", "shift", "swap_classes", "drop", "merge", "split", "mixed"]


@pytest.mark.parametrize("mode", REAL_MODES)
def test_real_coco_images_match_cityscapesscripts(tmp_path, mode):
    images, things = load_coco_sample()
    rng = np.random.default_rng(REAL_MODES.index(mode))
    gts = [g for g, _ in images]
    crowds = [c for _, c in images]
    assert all(len(c) > 0 for c in crowds), "the sample should contain crowd segments"
    preds = [perturb_real(g, mode, rng, things) for g in gts]
    ours = panoptic_quality(preds, gts, label_divisor=1000, thing_classes=things, gt_crowd_ids=crowds)
    ref = reference_pq(tmp_path, preds, gts, crowds, 1000, things, -1)
    assert_matches_reference(ours, ref)
    for k in range(len(gts)):  # and each image alone
        sub = tmp_path / f"single{k}"
        sub.mkdir()
        ours_k = panoptic_quality(preds[k], gts[k], label_divisor=1000, thing_classes=things,
                                  gt_crowd_ids=crowds[k])
        assert_matches_reference(ours_k, reference_pq(sub, [preds[k]], [gts[k]], [crowds[k]], 1000, things, -1))


def test_real_coco_perfect_prediction():
    images, things = load_coco_sample()
    gts = [g for g, _ in images]
    res = panoptic_quality(gts, gts, label_divisor=1000, thing_classes=things,
                           gt_crowd_ids=[c for _, c in images])
    assert res["All"]["pq"] == 1.0 and res["All"]["sq"] == 1.0 and res["All"]["rq"] == 1.0
    assert res["Things"]["n"] >= 3 and res["Stuff"]["n"] >= 3


# --------------------------------------------------------------------------- hand-computed cases
def test_hand_computed_4x4():
    # class 1 = thing, class 2 = stuff; -1 = void.
    gt = np.array([[1000, 1000, 1001, 1001],
                   [1000, 1000, 1001, 1001],
                   [2000, 2000, 2000, 2000],
                   [-1, -1, 2000, 2000]])
    pred = gt.copy()
    pred[0, 2] = 1000   # pred 1000: 5 px, IoU 4/5;  pred 1001: 3 px, IoU 3/4
    pred[3, 0] = 2000   # stuff pred grows onto void: void removed from the union, IoU 6/6
    res = panoptic_quality(pred, gt, label_divisor=1000, thing_classes=[1])
    assert res["per_class"][1] == {"pq": pytest.approx(0.775), "sq": pytest.approx(0.775), "rq": 1.0,
                                   "tp": 2, "fp": 0, "fn": 0, "iou": pytest.approx(1.55)}
    assert res["per_class"][2]["pq"] == 1.0
    assert res["All"] == {"pq": pytest.approx(0.8875), "sq": pytest.approx(0.8875), "rq": 1.0, "n": 2}
    assert res["Things"]["n"] == 1 and res["Stuff"]["n"] == 1


def test_iou_exactly_half_is_not_a_match():
    gt = np.full((4, 4), 2000)
    gt[:2, :2] = 1000          # 4 px thing
    pred = np.full((4, 4), 2000)
    pred[:2, :4] = 1005        # 8 px, contains the thing: IoU = 4/8 = 0.5 -> FN + FP
    res = panoptic_quality(pred, gt, label_divisor=1000, thing_classes=[1])
    assert (res["per_class"][1]["tp"], res["per_class"][1]["fp"], res["per_class"][1]["fn"]) == (0, 1, 1)
    assert res["per_class"][1]["pq"] == 0.0
    # stuff: gt 12 px, pred 8 px inside it: IoU 8/12 -> TP
    assert res["per_class"][2]["tp"] == 1
    assert res["per_class"][2]["pq"] == pytest.approx(8 / 12)
    assert res["Stuff"]["sq"] == pytest.approx(8 / 12) and res["Stuff"]["rq"] == 1.0


def test_void_and_crowd_ignore_rules():
    gt = np.full((4, 4), 3000)
    gt[:, :2] = -1            # void left half (8 px)
    gt[0:2, 2:4] = 1999       # crowd of class 1 (4 px)
    crowd = [1999]
    pred = np.full((4, 4), -1)
    pred[0:3, 0:2] = 1001     # 6 px on void -> ignored
    pred[3, 0:3] = 1002       # 2 of 3 px on void -> ignored (2/3 > 0.5)
    pred[0, 2:4] = 1003       # 2 px on the crowd of its class -> ignored
    pred[1, 2:4] = 2001       # 2 px on a crowd of another class -> FP
    pred[2, 2:4] = 1004       # 2 px on stuff 3000 -> FP
    res = panoptic_quality(pred, gt, label_divisor=1000, thing_classes=[1, 2], gt_crowd_ids=crowd)
    pc = res["per_class"]
    assert (pc[1]["tp"], pc[1]["fp"], pc[1]["fn"]) == (0, 1, 0)
    assert (pc[2]["tp"], pc[2]["fp"], pc[2]["fn"]) == (0, 1, 0)
    assert (pc[3]["tp"], pc[3]["fp"], pc[3]["fn"]) == (0, 0, 1)
    assert res["All"]["pq"] == 0.0 and res["All"]["n"] == 3
    # Exactly half on void is not ignored (the rule is "> 0.5").
    pred2 = np.full((4, 4), -1)
    pred2[0, 1:3] = 1001      # 1 px void, 1 px crowd of class 1 -> 2/2 ignored
    pred2[3, 1:3] = 1002      # 1 px void + 1 px stuff -> 1/2, counted as FP
    res2 = panoptic_quality(pred2, gt, label_divisor=1000, thing_classes=[1, 2], gt_crowd_ids=crowd)
    assert res2["per_class"][1]["fp"] == 1
    # a crowd-only class has TP+FP+FN = 0: listed, but not averaged
    res3 = panoptic_quality(np.full((4, 4), -1), gt, label_divisor=1000, thing_classes=[1], gt_crowd_ids=crowd)
    assert res3["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0, "iou": 0.0}
    assert res3["All"]["n"] == 1 and res3["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_void_removed_from_union_and_negative_void():
    gt = np.full((2, 4), -5)
    gt[:, :2] = 7              # label_divisor 3 -> class 2, instance 1
    pred = np.full((2, 4), 7)  # covers the gt segment and all the void
    res = panoptic_quality(pred, gt, label_divisor=3, thing_classes=[2], void_id=-5)
    assert res["per_class"][2]["pq"] == 1.0
    assert res["Things"]["pq"] == 1.0 and res["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_empty_inputs():
    void = np.full((3, 3), -1)
    res = panoptic_quality(void, void, label_divisor=10, thing_classes=[])
    assert res["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0} and res["per_class"] == {}
    assert panoptic_quality([], [], label_divisor=10, thing_classes=[])["All"]["n"] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pred=np.zeros((3, 4), int), gt=np.zeros((4, 3), int)), "shapes differ"),
        (dict(pred=np.zeros((3, 3)), gt=np.zeros((3, 3), int)), "integer dtype"),
        (dict(pred=torch.zeros(3, 3), gt=torch.zeros(3, 3, dtype=torch.long)), "integer dtype"),
        (dict(pred=np.zeros((3, 3), bool), gt=np.zeros((3, 3), int)), "integer dtype"),
        (dict(pred=np.zeros((1, 3, 3), int), gt=np.zeros((1, 3, 3), int)), "2-D"),
        (dict(pred=[np.zeros((3, 3), int)] * 2, gt=[np.zeros((3, 3), int)]), "same length"),
        (dict(pred=[np.zeros((3, 3), int)], gt=np.zeros((3, 3), int)), "both"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), label_divisor=0), "label_divisor must be >= 1, got 0"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), label_divisor=-2), "label_divisor must be >= 1"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), label_divisor=2.5), "label_divisor must be an integer"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), label_divisor=True), "label_divisor must be an integer"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), label_divisor=2**70),
         "label_divisor must be <= 9223372036854775807"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), void_id=2**70), "void_id must be <= 9223372036854775807"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), gt_crowd_ids=[2**70]),
         r"gt_crowd_ids\[0\] must be <= 9223372036854775807"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), gt_crowd_ids=[1.0]), r"gt_crowd_ids\[0\] must be an integer"),
        (dict(pred=np.full((3, 3), -2000), gt=np.zeros((3, 3), int)), "negative class"),
        (dict(pred=np.zeros((3, 3), int), gt=np.full((3, 3), -1), void_id=0), "negative class"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), gt_crowd_ids=[-1]),
         r"gt_crowd_ids\[0\] = -1 equals void_id"),
        (dict(pred=[np.zeros((3, 3), int)], gt=[np.zeros((3, 3), int)], gt_crowd_ids=[[1], [2]]), "one iterable"),
        (dict(pred=[np.zeros((3, 3), int)], gt=[np.zeros((3, 3), int)], gt_crowd_ids=[5]), "iterable"),
        (dict(pred=[[0, 0], [0, 0]], gt=[[0, 0], [0, 0]]), "numpy array or torch tensor"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), thing_classes=[-1]), r"thing_classes\[0\] must be >= 0"),
        (dict(pred=np.zeros((3, 3), int), gt=np.zeros((3, 3), int), thing_classes=[1.0]),
         r"thing_classes\[0\] must be an integer, got 1.0"),
    ],
)
def test_bad_input_raises(kwargs, message):
    args = dict(label_divisor=1000, thing_classes=[1])
    args.update(kwargs)
    pred, gt = args.pop("pred"), args.pop("gt")
    with pytest.raises(ValueError, match=message):
        panoptic_quality(pred, gt, **args)
