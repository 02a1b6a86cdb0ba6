"""Tests of the COPS PQ surrogate (detectron2_cops.layers.pq_surrogate)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import LD, masks_from_ids
from detectron2_cops.layers.panoptic_quality import panoptic_quality
from detectron2_cops.layers.pq_surrogate import (
    PaddedImage,
    PanopticQualitySurrogate,
    SurrogateOutput,
    match_segments,
)

THINGS = (0, 1, 2)
STUFF = (3, 4)
EXTRA_STUFF = 5  # a stuff class never present in the ground truth

# The soft-PQ variant of the surrogate (rule "pq", no ratio epsilon, overlap needed for a thing
# match): exact PQ on hard masks. The COPS code's variant (the default) is tested at the end.
LEGACY = dict(ratio_eps=0.0, rule="pq", match_zero_overlap=False)


def Legacy(*args, **kwargs):
    return PanopticQualitySurrogate(*args, **{**LEGACY, **kwargs})


def hard_batch(seed, n_cells=6, cell=3):
    """Random gt/pred id maps whose same-class overlaps are all IoU 0 or 1.

    Cells of ``cell x cell`` pixels get a gt segment (stuff class, thing instance spanning one or
    more cells) or void. Each gt segment is predicted exactly (kept), dropped, or predicted with a
    wrong class (relabelled to a thing class or to a stuff class absent from the gt); kept
    segments may also grow onto a void cell (weight 0; void is removed from the exact IoU).
    """
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(int(rng.integers(1, 4))):
        lab = np.full((n_cells, n_cells), -1, dtype=np.int64)
        inst = 1
        for y in range(n_cells):
            for x in range(n_cells):
                r = rng.random()
                if r < 0.12:
                    continue
                if r < 0.45:
                    lab[y, x] = int(rng.choice(STUFF)) * LD
                elif x > 0 and lab[y, x - 1] % LD != 0 and lab[y, x - 1] != -1 and rng.random() < 0.4:
                    lab[y, x] = lab[y, x - 1]  # extend the thing on the left
                else:
                    lab[y, x] = int(rng.choice(THINGS)) * LD + inst
                    inst += 1
        pred_lab = np.full_like(lab, -1)
        new_inst = 500
        for i in [i for i in np.unique(lab).tolist() if i != -1]:
            r = rng.random()
            if r < 0.6:
                new = i if i % LD == 0 else (i // LD) * LD + new_inst
            elif r < 0.75:
                new = None
            elif r < 0.9:
                new = int(rng.choice([c for c in THINGS if c != i // LD])) * LD + new_inst
            else:
                new = EXTRA_STUFF * LD
            new_inst += 1
            if new is not None:
                pred_lab[lab == i] = new
                if rng.random() < 0.3 and new // LD == i // LD:
                    ys, xs = np.nonzero((lab == -1) & (pred_lab == -1))
                    if ys.size:
                        pred_lab[ys[0], xs[0]] = new  # grow onto a void cell
        gts.append(np.kron(lab, np.ones((cell, cell), dtype=np.int64)))
        preds.append(np.kron(pred_lab, np.ones((cell, cell), dtype=np.int64)))
    return preds, gts


def surrogate_inputs(preds, gts, dtype=torch.float32, requires_grad=False):
    pm, pc, gm, gc, w = [], [], [], [], []
    for p, g in zip(preds, gts):
        m, c, _ = masks_from_ids(p, dtype=dtype)
        pm.append(m.requires_grad_(requires_grad))
        pc.append(c)
        m, c, _ = masks_from_ids(g)
        gm.append(m.bool())
        gc.append(c)
        w.append(torch.from_numpy(g != -1).to(dtype))
    return pm, pc, gm, gc, w


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("seed", range(8))
def test_equals_exact_pq_on_hard_masks(seed):
    preds, gts = hard_batch(seed)
    pm, pc, gm, gc, w = surrogate_inputs(preds, gts)
    module = Legacy(THINGS, stuff_area=-1e4, instance_area=-1e4)
    out = module(pm, pc, gm, gc, w)
    exact = panoptic_quality(preds, gts, label_divisor=LD, thing_classes=THINGS)
    assert isinstance(out, SurrogateOutput)
    assert out.pq.item() == pytest.approx(exact["All"]["pq"], abs=1e-4)
    assert out.loss.item() == pytest.approx(1.0 - exact["All"]["pq"], abs=1e-4)
    assert set(out.per_class) == {c for c, v in exact["per_class"].items() if v["tp"] + v["fp"] + v["fn"] > 0}
    for c, v in out.per_class.items():
        assert v == pytest.approx(exact["per_class"][c]["pq"], abs=1e-4), c
    # matched pairs are exactly the exact-PQ true positives (stuff pairs with zero overlap aside)
    n_tp = sum(v["tp"] for v in exact["per_class"].values())
    n_overlapping = 0
    for b, pairs in enumerate(out.matches):
        for i, j in pairs:
            assert int(pc[b][i]) == int(gc[b][j])
            n_overlapping += bool((pm[b][i].bool() & gm[b][j]).any())
    assert n_overlapping == n_tp


def test_formula_by_hand_on_soft_overlaps():
    """Partial overlaps, unsaturated s(p), zero weights: compare with the formula written out."""
    h_, w_ = 6, 8
    weights = torch.ones(h_, w_, dtype=torch.float64)
    weights[5, :] = 0.0  # ignored row
    gt = torch.zeros(3, h_, w_, dtype=torch.float64)
    gt[0, 0:3, 0:3] = 1  # thing class 0
    gt[1, 3:6, 0:8] = 1  # stuff class 3
    gt[2, 0:2, 5:8] = 1  # thing class 0, no prediction -> FN
    pred = torch.zeros(3, h_, w_, dtype=torch.float64)
    pred[0, 0:3, 1:4] = 1    # class 0, partial overlap with gt 0 (IoU 6/12)
    pred[0, 1, 1] = 0.5      # a soft pixel
    pred[1, 0:2, 4:5] = 0.7  # class 1 thing without gt -> FP
    pred[2, 2:6, 0:6] = 1    # class 3 (stuff), partial overlap with gt 1
    pred_classes = torch.tensor([0, 1, 3])
    gt_classes = torch.tensor([0, 3, 0])
    eps, beta, temp, inst_area, stuff_area = 0.1, 4.0, 0.1, 8.0, 30.0

    def iou(p, g):
        return (float((weights * p * g).sum()) + eps) / (float((weights * (p + g - p * g)).sum()) + eps)

    def h(u):
        return u ** beta / (u ** beta + (1 - u) ** beta)

    def s(p, limit):
        return 1.0 / (1.0 + np.exp(-temp * (float(p.sum()) - limit)))

    u0, u1 = iou(pred[0], gt[0]), iou(pred[2], gt[1])
    s0, s1, s2 = s(pred[0], inst_area), s(pred[2], stuff_area), s(pred[1], inst_area)
    assert 0.3 < u0 < 0.7 and 0.3 < u1 < 0.9 and 0.2 < s0 < 0.9 and 0.2 < s1 < 0.9
    # class 0: matched pair (pred 0, gt 0), unmatched gt 2
    pq0 = h(u0) * s0 * u0 / (h(u0) * s0 + 0.5 * ((1 - h(u0)) * s0 + (1 - h(u0)) + 1.0))
    # class 3: matched pair (pred 2, gt 1)
    pq3 = h(u1) * s1 * u1 / (h(u1) * s1 + 0.5 * ((1 - h(u1)) * s1 + (1 - h(u1))))
    # class 1: only a false positive
    pq1 = 0.0 / (0.5 * s2)
    module = Legacy([0, 1, 2], stuff_area=stuff_area, instance_area=inst_area)
    out = module([pred], [pred_classes], [gt], [gt_classes], [weights])
    assert out.matches == [[(0, 0), (2, 1)]]
    assert out.per_class[0] == pytest.approx(pq0, rel=1e-12)
    assert out.per_class[3] == pytest.approx(pq3, rel=1e-12)
    assert out.per_class[1] == 0.0
    assert out.pq.item() == pytest.approx((pq0 + pq1 + pq3) / 3, rel=1e-12)
    # The same image twice in a batch: numerators and denominators are summed per class.
    out2 = module([pred, pred], [pred_classes] * 2, [gt, gt], [gt_classes] * 2, [weights, weights])
    assert out2.pq.item() == pytest.approx(out.pq.item(), rel=1e-12)
    # ratio_eps is added to numerator and denominator of each class
    out3 = Legacy([0, 1, 2], stuff_area=stuff_area, instance_area=inst_area, ratio_eps=0.1)(
        [pred], [pred_classes], [gt], [gt_classes], [weights])
    den1 = 0.5 * s2
    assert out3.per_class[1] == pytest.approx(0.1 / (den1 + 0.1), rel=1e-12)


def test_hard_batches_cover_fp_and_fn():
    fp = fn = 0
    for seed in range(8):
        exact = panoptic_quality(*hard_batch(seed), label_divisor=LD, thing_classes=THINGS)
        fp += sum(v["fp"] for v in exact["per_class"].values())
        fn += sum(v["fn"] for v in exact["per_class"].values())
    assert fp >= 8 and fn >= 8


# --------------------------------------------------------------------------- gradients
def test_backward_reaches_every_overlapping_prediction():
    rng = np.random.default_rng(3)
    gts, preds = [], []
    for _ in range(2):
        gt = np.full((16, 16), 3 * LD)
        gt[8:, :] = 4 * LD
        for k in range(4):
            y, x = rng.integers(0, 11, size=2)
            gt[y:y + 5, x:x + 5] = (k % 2) * LD + k + 1
        pred = np.roll(gt, shift=(1, 1), axis=(0, 1))
        pred[0, :4] = 1 * LD + 77  # a class-1 prediction on the first row, over gt of other segments
        gts.append(gt)
        preds.append(pred)
    pm, pc, gm, gc, w = surrogate_inputs(preds, gts, requires_grad=True)
    module = Legacy(THINGS, stuff_area=60.0, instance_area=10.0)
    out = module(pm, pc, gm, gc, w)
    assert all(v > 0 for v in out.per_class.values())  # every predicted class has a TP
    out.loss.backward()
    checked = 0
    for b in range(len(pm)):
        grad = pm[b].grad
        assert grad is not None and torch.isfinite(grad).all()
        overlap = (pm[b].detach()[:, None].bool() & gm[b][None]).flatten(2).any(2).any(1)
        for m in range(pm[b].shape[0]):
            if overlap[m]:
                assert grad[m].abs().sum() > 0, (b, m)
                checked += 1
    assert checked >= 8


def test_false_positive_only_class_gradient_needs_ratio_eps():
    gt = torch.zeros(1, 6, 6, dtype=torch.bool)
    gt[0, :3] = True
    p = torch.zeros(2, 6, 6)
    p[0, :3] = 1.0  # TP of class 0
    p[1, 4:] = 1.0  # FP of class 1, which has no ground truth
    args = ([torch.tensor([0, 1])], [gt], [torch.tensor([0])])
    for ratio_eps, expect_grad in ((0.0, False), (0.1, True)):
        pm = p.clone().requires_grad_(True)
        out = Legacy([0, 1], stuff_area=5, instance_area=20, ratio_eps=ratio_eps)(
            [pm], args[0], args[1], args[2])
        out.loss.backward()
        assert bool(pm.grad[1].abs().sum() > 0) == expect_grad
        if ratio_eps:
            # the gradient shrinks the false positive (positive dL/dp on its pixels)
            assert (pm.grad[1][4:] > 0).all()


@pytest.mark.parametrize("with_weights", [False, True])
def test_gradcheck_float64(with_weights):
    torch.manual_seed(0)
    h = w = 5
    gt = torch.zeros(3, h, w, dtype=torch.float64)
    gt[0, :3, :3] = 1  # thing class 0
    gt[1, :, 3:] = 1   # stuff class 3
    gt[2, 3:, :2] = 1  # thing class 0, left unmatched
    gt_classes = torch.tensor([0, 3, 0])
    base = torch.zeros(3, h, w, dtype=torch.float64)
    base[0, :3, :3] = 0.8
    base[0, 3:, 3:] = 0.1
    base[1, :, 2:] = 0.7
    base[2, 3:, 2:] = 0.6  # class 1: no gt of class 1 -> FP
    masks = (base + 0.05 + 0.1 * torch.rand(3, h, w, dtype=torch.float64)).clamp(0.02, 0.98)
    masks2 = masks.flip(-1).clone()
    pred_classes = torch.tensor([0, 3, 1])
    weights = torch.ones(h, w, dtype=torch.float64)
    if with_weights:
        weights[4, 4] = 0.0
        weights[0, 0] = 0.5
    module = Legacy([0, 1], stuff_area=8.0, instance_area=4.0)

    def fn(m1, m2):
        out = module([m1, m2], [pred_classes, pred_classes], [gt, gt.flip(-1)], [gt_classes, gt_classes],
                     [weights, weights.flip(-1)])
        return out.loss

    m1 = masks.clone().requires_grad_(True)
    m2 = masks2.clone().requires_grad_(True)
    out = module([m1, m2], [pred_classes] * 2, [gt, gt.flip(-1)], [gt_classes] * 2, [weights, weights.flip(-1)])
    assert out.matches == [[(0, 0), (1, 1)], [(0, 0), (1, 1)]]
    assert torch.autograd.gradcheck(fn, (m1, m2), eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- matching
def _strip_masks(intervals, length=20):
    m = torch.zeros(len(intervals), 1, length)
    for k, (a, b) in enumerate(intervals):
        m[k, 0, a:b] = 1.0
    return m


def _iou(a, b):
    inter = float((a * b).sum())
    return inter / float((a + b - a * b).sum())


def test_matching_is_maximum_iou_not_greedy():
    gt = _strip_masks([(0, 10), (10, 20)]).bool()
    pred = _strip_masks([(2, 16), (0, 4)])
    iou = np.array([[_iou(pred[i], gt[j].float()) for j in range(2)] for i in range(2)])
    # greedy (take the best pair first) would match pred 0 to gt 0 and leave gt 1 unmatched ...
    assert np.unravel_index(iou.argmax(), iou.shape) == (0, 0) and iou[1, 1] == 0
    assert iou[0, 1] + iou[1, 0] > iou[0, 0]
    pairs = match_segments(pred, torch.tensor([0, 0]), gt, torch.tensor([0, 0]), None, thing_classes=[0])
    # ... the maximum-IoU assignment matches both
    assert pairs == [(0, 1), (1, 0)]
    out = Legacy([0], stuff_area=0, instance_area=0)(
        [pred], [torch.tensor([0, 0])], [gt], [torch.tensor([0, 0])])
    assert out.matches == [[(0, 1), (1, 0)]]


def test_matching_beats_every_permutation_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(20):
        m, g = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        pred = torch.from_numpy((rng.random((m, 6, 6)) < 0.4).astype(np.float64))
        gt = torch.from_numpy(rng.random((g, 6, 6)) < 0.4)
        weights = torch.from_numpy(rng.random((6, 6)))
        pairs = match_segments(pred, torch.zeros(m, dtype=torch.long), gt, torch.zeros(g, dtype=torch.long),
                               weights, thing_classes=[0], eps=0.1, match_zero_overlap=False)

        def score(i, j):
            w, p, q = weights, pred[i], gt[j].double()
            inter = float((w * p * q).sum())
            return (inter + 0.1) / (float((w * (p + q - p * q)).sum()) + 0.1) if inter > 0 else 0.0

        best = 0.0
        for perm in itertools.permutations(range(max(m, g)), min(m, g)):
            pp = list(zip(range(m), perm)) if m <= g else list(zip(perm, range(g)))
            best = max(best, sum(score(i, j) for i, j in pp))
        assert sum(score(i, j) for i, j in pairs) == pytest.approx(best, abs=1e-9), trial
        assert all(score(i, j) > 0 for i, j in pairs)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})


def test_stuff_matched_by_class_things_need_overlap():
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[0, :2] = True   # stuff class 3
    gt[1, 3, 3] = True  # thing class 0
    pred = torch.zeros(3, 4, 4)
    pred[0, 2:, :2] = 1  # stuff class 3, no overlap with the gt stuff
    pred[1, 0, 0] = 1    # thing class 0, no overlap with the gt thing
    pred[2, 2:, 2:] = 1  # stuff class 4 (absent from gt)
    pairs = match_segments(pred, torch.tensor([3, 0, 4]), gt, torch.tensor([3, 0]), None, thing_classes=[0],
                           match_zero_overlap=False)
    assert pairs == [(0, 0)]
    # the COPS matching (default) also matches the thing pair without overlap
    assert match_segments(pred, torch.tensor([3, 0, 4]), gt, torch.tensor([3, 0]), None, [0]) == [(0, 0), (1, 1)]
    # different classes are never matched, even when they overlap perfectly
    assert match_segments(gt.float(), torch.tensor([4, 1]), gt, torch.tensor([3, 0]), None, [0]) == []


def test_unmatched_gt_is_false_negative_and_adding_its_prediction_lowers_the_loss():
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, :4] = True
    gt[1, 4:] = True
    gt_classes = [torch.tensor([1, 1])]
    module = Legacy([1], stuff_area=-1e4, instance_area=-1e4)
    one = module([gt[:1].float()], [torch.tensor([1])], [gt], gt_classes)
    assert one.pq.item() == pytest.approx(1.0 / 1.5)  # 1 TP, 1 FN
    two = module([gt.float()], [torch.tensor([1, 1])], [gt], gt_classes)
    assert two.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert two.loss.item() < one.loss.item()
    none = module([torch.zeros(0, 8, 8, requires_grad=True)], [torch.zeros(0, dtype=torch.long)], [gt], gt_classes)
    assert none.loss.item() == 1.0 and none.matches == [[]]


def test_foreground_probability_discounts_tiny_false_positives():
    gt = torch.zeros(1, 20, 20, dtype=torch.bool)
    gt[0, :15] = True  # 300 px thing, predicted exactly (s = sigmoid(20) ~ 1)
    module = Legacy([0], stuff_area=1000, instance_area=100)

    def pq_with_fp(module, rows):
        fp = torch.zeros(1, 20, 20)
        fp[0, 20 - rows:] = 1.0  # 20 * rows px, no overlap with the gt
        out = module([torch.cat([gt.float(), fp])], [torch.tensor([0, 0])], [gt], [torch.tensor([0])])
        assert out.matches == [[(0, 0)]]
        return out.pq.item()

    # tiny false positive: 20 px << 100 px, s = sigmoid(-8) ~ 3e-4: almost free
    assert pq_with_fp(module, 1) == pytest.approx(1.0 / (1.0 + 0.5 / (1.0 + np.exp(8.0))), abs=1e-6)
    assert pq_with_fp(module, 1) > 0.9998
    # at the limit: 100 px, s = 0.5
    assert pq_with_fp(module, 5) == pytest.approx(1.0 / 1.25, abs=1e-5)
    # big false positive: 100 px >> 10 px limit, s ~ 1: costs 0.5 in the denominator
    big = Legacy([0], stuff_area=1000, instance_area=10)
    assert pq_with_fp(big, 5) == pytest.approx(1.0 / 1.5, abs=1e-4)


def test_stuff_uses_stuff_area_things_use_instance_area():
    gt = torch.zeros(1, 10, 10, dtype=torch.bool)
    gt[0, :5] = True   # 50 px, predicted exactly
    fp = torch.zeros(1, 10, 10)
    fp[0, 7:] = 1.0    # 30 px false positive of the same class
    module = Legacy([0], stuff_area=40.0, instance_area=0.0)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    for cls, limit in ((3, 40.0), (0, 0.0)):
        s_tp, s_fp = sig(0.1 * (50 - limit)), sig(0.1 * (30 - limit))
        out = module([torch.cat([gt.float(), fp])], [torch.tensor([cls, cls])], [gt], [torch.tensor([cls])])
        assert out.matches == [[(0, 0)]]
        assert out.pq.item() == pytest.approx(s_tp / (s_tp + 0.5 * s_fp), rel=1e-5), cls


# --------------------------------------------------------------------------- edge cases
def test_no_gt_all_false_positives():
    pred = torch.zeros(2, 6, 6)
    pred[0, :3] = 1
    pred[1, 3:] = 1
    pred.requires_grad_(True)
    module = Legacy([0], stuff_area=5, instance_area=5)
    out = module([pred], [torch.tensor([0, 3])], [torch.zeros(0, 6, 6, dtype=torch.bool)],
                 [torch.zeros(0, dtype=torch.long)])
    assert out.loss.item() == 1.0 and out.matches == [[]] and set(out.per_class) == {0, 3}
    out.loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_no_gt_and_no_predictions_gives_finite_zero_loss():
    pred = torch.zeros(0, 6, 6, requires_grad=True)
    other = torch.zeros(1, 6, 6)
    other[0, :2] = 1
    other.requires_grad_(True)
    module = Legacy([0], stuff_area=5, instance_area=5)
    empty_gt = [torch.zeros(0, 6, 6, dtype=torch.bool)]
    empty_cls = [torch.zeros(0, dtype=torch.long)]
    out = module([pred], [torch.zeros(0, dtype=torch.long)], empty_gt, empty_cls)
    assert out.loss.item() == 0.0 and torch.isfinite(out.loss) and out.per_class == {}
    out.loss.backward()
    # a batch where one image is empty and the other is perfect: the empty one changes nothing
    gt = other.detach().bool()
    mixed = module([pred, other], [torch.zeros(0, dtype=torch.long), torch.tensor([0])],
                   empty_gt + [gt], empty_cls + [torch.tensor([0])])
    alone = module([other], [torch.tensor([0])], [gt], [torch.tensor([0])])
    assert mixed.loss.item() == pytest.approx(alone.loss.item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu():
    preds, gts = hard_batch(5)
    pm, pc, gm, gc, w = surrogate_inputs(preds, gts, requires_grad=True)
    module = Legacy(THINGS, stuff_area=20.0, instance_area=10.0)
    cpu = module(pm, pc, gm, gc, w)
    cpu.loss.backward()
    pm_cuda = [p.detach().cuda().requires_grad_(True) for p in pm]
    out = module(pm_cuda, [c.cuda() for c in pc], [g.cuda() for g in gm], [c.cuda() for c in gc],
                 [x.cuda() for x in w])
    assert out.loss.device.type == "cuda"
    out.loss.backward()
    assert out.loss.item() == pytest.approx(cpu.loss.item(), abs=1e-5)
    assert out.matches == cpu.matches
    for a, b in zip(pm, pm_cuda):
        torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-5, rtol=1e-4)


def _good_inputs():
    pm = [torch.zeros(2, 4, 4), torch.zeros(1, 4, 5)]
    pc = [torch.tensor([0, 1]), torch.tensor([1])]
    gm = [torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(2, 4, 5)]
    gc = [torch.tensor([0]), torch.tensor([1, 2])]
    w = [torch.ones(4, 4), torch.ones(4, 5)]
    return pm, pc, gm, gc, w


def _set(lst, k, v):
    lst = list(lst)
    lst[k] = v
    return lst


# One entry per kind of bad per-image input: (edit of _good_inputs(), message).
_BAD_IMAGES = [
    (lambda a: (_set(a[0], 0, torch.zeros(4, 4)),) + a[1:], r"pred_masks\[0\] must be a floating point torch.Tensor \[M, H, W\], got torch.float32 \[4, 4\]"),
    (lambda a: (_set(a[0], 0, np.zeros((2, 4, 4))),) + a[1:], r"pred_masks\[0\] must be a floating point torch.Tensor \[M, H, W\], got ndarray"),
    (lambda a: (_set(a[0], 0, torch.zeros(2, 4, 4, dtype=torch.long)),) + a[1:],
     r"pred_masks\[0\] must be a floating point torch.Tensor \[M, H, W\], got torch.int64 \[2, 4, 4\]"),
    (lambda a: (_set(a[0], 0, torch.zeros(2, 4, 4, dtype=torch.bool)),) + a[1:], "pred_masks.* must be a floating point"),
    (lambda a: (_set(a[0], 0, torch.full((2, 4, 4), float("nan"))),) + a[1:], r"pred_masks\[0\] contains NaN or inf"),
    (lambda a: (_set(a[0], 0, torch.full((2, 4, 4), 1.5)),) + a[1:], r"pred_masks\[0\] values must lie in \[0, 1\]"),
    (lambda a: a[:2] + (_set(a[2], 1, torch.full((2, 4, 5), float("inf"))),) + a[3:], r"gt_masks\[1\] contains NaN or inf"),
    (lambda a: a[:2] + (_set(a[2], 1, torch.zeros(2, 4, 5, dtype=torch.long)),) + a[3:],
     r"gt_masks\[1\] must be a bool or floating point torch.Tensor \[G, H, W\], got torch.int64"),
    (lambda a: (_set(a[0], 1, torch.zeros(1, 4, 4)),) + a[1:],
     r"gt_masks\[1\] spatial size \[4, 5\] differs from pred_masks\[1\] \[4, 4\]"),
    (lambda a: (a[0], _set(a[1], 0, torch.tensor([0]))) + a[2:], r"pred_classes\[0\] must have shape \[2\]"),
    (lambda a: (a[0], _set(a[1], 0, torch.tensor([0.0, 1.0]))) + a[2:], r"pred_classes\[0\] must be an integer"),
    (lambda a: (a[0], _set(a[1], 0, [0, 1])) + a[2:], r"pred_classes\[0\] must be an int64 torch.Tensor"),
    (lambda a: (a[0], _set(a[1], 0, torch.tensor([0, -1]))) + a[2:], r"pred_classes\[0\] contains negative class ids"),
    (lambda a: a[:3] + (_set(a[3], 1, torch.tensor([1])),) + a[4:], r"gt_classes\[1\] must have shape \[2\]"),
    (lambda a: a[:4] + (_set(a[4], 1, torch.ones(4, 4)),), r"pixel_weights\[1\] must be a floating point torch.Tensor \[H, W\] = \[4, 5\], got torch.float32 \[4, 4\]"),
    (lambda a: a[:4] + (_set(a[4], 0, torch.full((4, 4), float("nan"))),), r"pixel_weights\[0\] contains NaN or inf"),
    (lambda a: a[:4] + (_set(a[4], 0, -torch.ones(4, 4)),), r"pixel_weights\[0\] must be non-negative"),
    (lambda a: a[:4] + (_set(a[4], 0, torch.ones(4, 4, dtype=torch.long)),), r"pixel_weights\[0\] must be a floating"),
]


@pytest.mark.parametrize(
    "edit, message",
    _BAD_IMAGES + [
        (lambda a: (a[0][:1],) + a[1:], "per-image lists must have the same length"),
        (lambda a: a[:4] + ([torch.ones(4, 4)],), "per-image lists must have the same length"),
        (lambda a: (_set(a[0], 1, torch.zeros(1, 4, 5, dtype=torch.float64)),) + a[1:],
         r"pred_masks\[1\] is torch.float64 on cpu but pred_masks\[0\] is torch.float32 .* share dtype and device"),
        (lambda a: ([], [], [], [], None), "empty batch"),
    ],
)
def test_bad_input_raises(edit, message):
    module = Legacy([0], stuff_area=1.0, instance_area=1.0)
    args = edit(_good_inputs())
    with pytest.raises(ValueError, match=message):
        module(*args)


@pytest.mark.parametrize("edit, message", _BAD_IMAGES)
def test_match_segments_bad_input(edit, message):
    """match_segments (one image) refuses what forward refuses (the same checks, once)."""
    b = 1 if r"\[1\]" in message else 0
    pm, pc, gm, gc, w = (x[b] for x in edit(_good_inputs()))
    with pytest.raises(ValueError, match=message.replace(rf"\[{b}\]", "")):
        match_segments(pm, pc, gm, gc, w, [0])


def test_match_segments_bad_arguments_and_padding_bad_ground_truth():
    pm, pc, gm, gc, w = (x[0] for x in _good_inputs())
    for kwargs, message in ((dict(eps=0.0), "eps must be > 0"), (dict(eps="0.1"), "eps must be a real number"),
                            (dict(thing_classes=[-1]), r"thing_classes\[0\] must be >= 0"),
                            (dict(thing_classes=[0.0]), r"thing_classes\[0\] must be an integer")):
        with pytest.raises(ValueError, match=message):
            match_segments(pm, pc, gm, gc, w, **{"thing_classes": [0], **kwargs})
    module = Legacy([0], stuff_area=1.0, instance_area=1.0)
    _, _, gm, gc, w = _good_inputs()
    for args, message in (((gm, gc[:1], w), "per-image lists must have the same length"),
                          (([], [], None), "empty batch"),
                          ((gm, gc, [w[0], -w[1]]), r"pixel_weights\[1\] must be non-negative"),
                          ((_set(gm, 1, torch.full((2, 4, 5), 2.0)), gc, w), r"gt_masks\[1\] values must lie in \[0, 1\]"),
                          ((gm, _set(gc, 0, torch.tensor([-3])), w), r"gt_classes\[0\] contains negative class ids")):
        with pytest.raises(ValueError, match=message):
            module.padding(*args)


def test_good_inputs_work_and_bad_constructor_arguments_raise():
    out = Legacy([0], stuff_area=1.0, instance_area=1.0)(*_good_inputs())
    assert torch.isfinite(out.loss)
    for kwargs, message in ((dict(eps=0.0), "eps must be > 0"), (dict(beta=-1.0), "beta must be > 0"),
                            (dict(area_temperature=0.0), "area_temperature must be > 0"),
                            (dict(ratio_eps=-0.1), "ratio_eps must be >= 0.0"),
                            (dict(stuff_area=float("nan")), "stuff_area must be finite"),
                            (dict(instance_area="10"), "instance_area must be a real number"),
                            (dict(rule="other"), r"rule must be one of \['original', 'pq'\]"),
                            (dict(match_zero_overlap=1), "match_zero_overlap must be a bool"),
                            (dict(thing_classes=[-1]), r"thing_classes\[0\] must be >= 0"),
                            (dict(thing_classes=[True]), r"thing_classes\[0\] must be an integer")):
        args = dict(thing_classes=[0], stuff_area=1.0, instance_area=1.0)
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            PanopticQualitySurrogate(args.pop("thing_classes"), **args)
    assert PanopticQualitySurrogate(range(2), stuff_area=1.0, instance_area=1.0).thing_classes == {0, 1}


# --------------------------------------------------------------------------- the COPS code's variant
def _cops_reference(preds, pred_cls, gts, gt_cls, weights, things, inst_area, stuff_area, eps=0.1, ratio_eps=0.1):
    """The authors' surrogate written out in NumPy, step by step as ``ComputeBestGroundTruth`` /
    ``MatchMasksPair`` (utils.py) and ``PanopticQualityLoss.forward`` (losses.py):
    pred channels padded with one zero mask per unmatched gt; gt channel = matched gt (zeros for
    unmatched predictions)."""
    from scipy.optimize import linear_sum_assignment

    def iou(p, g, w):
        inter = (p * g * w).sum()
        return (inter + eps) / (((p + g - p * g) * w).sum() + eps)

    def h(u):
        return u ** 4 / (u ** 4 + (1 - u) ** 4)

    num, den = {}, {}
    for P, pc, G, gc, W in zip(preds, pred_cls, gts, gt_cls, weights):
        chans = []  # (pred mask, gt mask, class)
        for c in sorted(set(pc) | set(gc)):
            pi = [i for i, k in enumerate(pc) if k == c]
            gi = [j for j, k in enumerate(gc) if k == c]
            gt_of = {}
            if pi and gi:
                if c in things:
                    sim = np.array([[iou(P[i], G[j], W) for j in gi] for i in pi])
                    rows, cols = linear_sum_assignment(sim, maximize=True)
                    gt_of = {pi[r]: gi[k] for r, k in zip(rows, cols)}
                else:
                    gt_of = {pi[0]: gi[0]}
            for i in pi:
                chans.append((P[i], G[gt_of[i]] if i in gt_of else np.zeros_like(P[i]), c))
            for j in gi:
                if j not in gt_of.values():
                    chans.append((np.zeros_like(G[j]), G[j], c))
        for p, g, c in chans:
            u = iou(p, g, W)
            nz = float(g.any())
            limit = inst_area if c in things else stuff_area
            s = 1.0 / (1.0 + np.exp(-0.1 * (p.sum() - limit)))
            num[c] = num.get(c, 0.0) + h(u) * s * nz * u
            den[c] = den.get(c, 0.0) + h(u) * s * nz + 0.5 * (1 - h(u)) * nz + 0.5 * (1 - nz) * (1 - h(u)) * s
    per_class = {c: (num[c] + ratio_eps) / (den[c] + ratio_eps) for c in num if den[c] > 0}
    return per_class


def test_cops_formula_by_hand_small_case():
    """One image, hand-computed: a matched thing pair below IoU 0.5 is only a soft FN; an
    unmatched prediction is a FP discounted by h(IoU with an empty gt); an unmatched gt is paired
    with an empty prediction; ratio epsilon 0.1."""
    h_, w_ = 4, 6
    gt = np.zeros((3, h_, w_))
    gt[0, 0:2, 0:2] = 1  # thing 0 (4 px)
    gt[1, 0:2, 4:6] = 1  # thing 0 (4 px), far from every prediction
    gt[2, 2:4, :] = 1    # stuff 1 (12 px)
    pred = np.zeros((3, h_, w_))
    pred[0, 0:2, 1:3] = 1  # thing 0, IoU 2/6 with gt 0
    pred[1, 3, 0:2] = 1    # thing 0, no overlap with anything of class 0 -> matched to gt 1 (zero overlap)
    pred[2, 2:4, 2:6] = 1  # stuff 1, 8 px of the 12
    W = np.ones((h_, w_))
    inst, stuff = 2.0, 6.0  # the module's eps is the default 0.1 used below
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h = lambda u: u ** 4 / (u ** 4 + (1 - u) ** 4)  # noqa: E731
    # class 0: pairs (pred0, gt0) IoU (2+.1)/(6+.1), (pred1, gt1) IoU .1/(6+.1) (zero overlap matches)
    u0, u1 = 2.1 / 6.1, 0.1 / 6.1
    s0, s1 = sig(0.1 * (4 - inst)), sig(0.1 * (2 - inst))
    num0 = h(u0) * s0 * u0 + h(u1) * s1 * u1
    den0 = h(u0) * s0 + h(u1) * s1 + 0.5 * ((1 - h(u0)) + (1 - h(u1)))  # no FP term for matched pairs
    # class 1: stuff pair IoU (8+.1)/(12+.1)
    u2, s2 = 8.1 / 12.1, sig(0.1 * (8 - stuff))
    num1, den1 = h(u2) * s2 * u2, h(u2) * s2 + 0.5 * (1 - h(u2))
    expect = {0: (num0 + 0.1) / (den0 + 0.1), 1: (num1 + 0.1) / (den1 + 0.1)}
    module = PanopticQualitySurrogate([0], stuff_area=stuff, instance_area=inst)
    out = module([torch.from_numpy(pred)], [torch.tensor([0, 0, 1])], [torch.from_numpy(gt).bool()],
                 [torch.tensor([0, 0, 1])], [torch.from_numpy(W)])
    assert out.matches == [[(0, 0), (1, 1), (2, 2)]]
    assert out.per_class == pytest.approx(expect, rel=1e-12)
    assert out.pq.item() == pytest.approx((expect[0] + expect[1]) / 2, rel=1e-12)
    # a false-positive-only class (class 2, 6 px, no gt): (1 - h(eps / (6 + eps))) s in FP~
    fp = np.zeros((1, h_, w_))
    fp[0, 0:3, 3] = 1
    fp[0, 3, 2:5] = 1
    out2 = module([torch.from_numpy(np.concatenate([pred, fp]))], [torch.tensor([0, 0, 1, 2])],
                  [torch.from_numpy(gt).bool()], [torch.tensor([0, 0, 1])], [torch.from_numpy(W)])
    s3 = sig(0.1 * (6 - stuff))
    den2 = 0.5 * (1 - h(0.1 / 6.1)) * s3
    assert out2.per_class[2] == pytest.approx(0.1 / (den2 + 0.1), rel=1e-12)
    # with ratio epsilon 0 such a class has PQ~ 0 and gives no gradient
    p = torch.from_numpy(np.concatenate([pred, fp])).requires_grad_(True)
    out3 = PanopticQualitySurrogate([0], stuff_area=stuff, instance_area=inst, ratio_eps=0.0)(
        [p], [torch.tensor([0, 0, 1, 2])], [torch.from_numpy(gt).bool()], [torch.tensor([0, 0, 1])],
        [torch.from_numpy(W)])
    out3.loss.backward()
    assert out3.per_class[2] == 0.0 and p.grad[3].abs().sum() == 0
    p.grad = None
    module([p], [torch.tensor([0, 0, 1, 2])], [torch.from_numpy(gt).bool()], [torch.tensor([0, 0, 1])],
           [torch.from_numpy(W)]).loss.backward()
    assert (p.grad[3][fp[0] > 0] > 0).all()  # ratio epsilon 0.1: the gradient shrinks it


@pytest.mark.parametrize("seed", range(6))
def test_cops_variant_equals_reference_on_random_soft_cases(seed):
    rng = np.random.default_rng(seed)
    things = {0, 1}
    preds, pcs, gts, gcs, ws = [], [], [], [], []
    for _ in range(2):
        m, g = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        gcs.append([int(rng.choice([0, 1, 2, 3])) for _ in range(g)])
        pcs.append([int(rng.choice([0, 1, 2, 4])) for _ in range(m)])
        # stuff: at most one segment per class on each side (as the AMWC layer produces)
        gcs[-1] = [c for k, c in enumerate(gcs[-1]) if c in things or c not in gcs[-1][:k]]
        pcs[-1] = [c for k, c in enumerate(pcs[-1]) if c in things or c not in pcs[-1][:k]]
        gts.append((rng.random((len(gcs[-1]), 5, 6)) < 0.3).astype(np.float64))
        preds.append(np.clip(rng.random((len(pcs[-1]), 5, 6)) * (rng.random((len(pcs[-1]), 5, 6)) < 0.4), 0, 1))
        ws.append(rng.random((5, 6)) * (rng.random((5, 6)) < 0.9))
    expect = _cops_reference(preds, pcs, gts, gcs, ws, things, inst_area=3.0, stuff_area=4.0)
    module = PanopticQualitySurrogate(sorted(things), stuff_area=4.0, instance_area=3.0)
    out = module([torch.from_numpy(p) for p in preds], [torch.tensor(c, dtype=torch.long) for c in pcs],
                 [torch.from_numpy(g) for g in gts], [torch.tensor(c, dtype=torch.long) for c in gcs],
                 [torch.from_numpy(w) for w in ws])
    assert out.per_class == pytest.approx(expect, rel=1e-9, abs=1e-12)


def test_padded_masks_are_paired_with_their_ground_truth_and_get_a_gradient():
    gt = torch.zeros(2, 6, 6, dtype=torch.bool)
    gt[0, :3] = True
    gt[1, 3:] = True
    pred = torch.zeros(1, 6, 6)
    pred[0] = 1.0  # one thing over both gts (a merge)
    module = PanopticQualitySurrogate([0], stuff_area=0.0, instance_area=2.0)
    gm, gc = [gt], [torch.tensor([0, 0])]
    plain = module([pred], [torch.tensor([0])], gm, gc)
    padding = module.padding(gm, gc)
    assert padding(0, pred, torch.tensor([0])) == [0]  # the class of the missed ground truth
    assert padding.images[0] == PaddedImage([0], [(0, 0)], [1])
    padded = torch.cat([pred, torch.zeros(1, 6, 6)]).requires_grad_(True)
    out = module([padded], [torch.tensor([0, 0])], gm, gc, padding=padding)
    assert out.matches == [[(0, 0), (1, 1)]]
    # an empty padded mask gives the value of the constant empty prediction
    assert out.pq.item() == pytest.approx(plain.pq.item(), rel=1e-12)
    out.loss.backward()
    g = padded.grad[1]
    assert (g[3:] < 0).all() and (g[:3] > 0).all()  # grow on its gt, stay off the other one

    # a padding belongs to its module, its ground-truth lists and the masks it was called with
    other = PanopticQualitySurrogate([0], stuff_area=0.0, instance_area=2.0)
    masks, classes = [padded.detach()], [torch.tensor([0, 0])]
    for pm, pc, gt_lists, pad, message in (
        (masks, classes, ([gt], gc), padding, "padding must be this module's padding.* same lists"),
        (masks, classes, (gm, gc), other.padding(gm, gc), "padding must be this module's padding"),
        (masks, classes, (gm, gc), 5, "padding must be this module's padding"),
        (masks, [torch.tensor([0, 1])], (gm, gc), padding, "not the masks the padding was called with"),
        ([pred], [torch.tensor([0])], (gm, gc), padding, "not the masks the padding was called with"),
    ):
        with pytest.raises(ValueError, match=message):
            module(pm, pc, *gt_lists, padding=pad)
    fresh = module.padding(gm, gc)  # not called yet
    with pytest.raises(ValueError, match="not the masks the padding was called with"):
        module(masks, classes, gm, gc, padding=fresh)
    with pytest.raises(ValueError, match="holds the ground truth of 1 images, not of image 1"):
        fresh(1, pred, torch.tensor([0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_masks_are_computed_in_float32(dtype):
    """Sums over pixels overflow float16 from 65504: a 256 x 256 mask with pixel weight 2 does.
    Half-precision masks are computed in float32 (differentiably): loss and gradient are finite
    and equal those of the float32 masks the half ones round to."""
    g = torch.Generator().manual_seed(0)
    H = W = 256
    gt = torch.zeros(2, H, W)
    gt[0, :, : W // 2] = 1
    gt[1, :, W // 2:] = 1
    half = torch.rand(3, H, W, generator=g).to(dtype)
    weights = [torch.full((H, W), 2.0)]
    module = PanopticQualitySurrogate([1], stuff_area=10.0, instance_area=10.0)
    results = {}
    for masks in (half, half.float()):
        p = masks.clone().requires_grad_()
        out = module([p], [torch.tensor([0, 1, 1])], [gt], [torch.tensor([0, 1])], pixel_weights=weights)
        out.loss.backward()
        assert p.grad.dtype == masks.dtype
        results[masks.dtype] = (out.loss.detach(), p.grad.float())
    loss_h, grad_h = results[dtype]
    loss_f, grad_f = results[torch.float32]
    assert torch.isfinite(loss_h) and torch.isfinite(grad_h).all()
    assert loss_h.dtype == torch.float32 and loss_h == loss_f
    torch.testing.assert_close(grad_h, grad_f.to(dtype).float(), rtol=0, atol=0)
