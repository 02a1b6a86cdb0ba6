"""The AMWC post-processor's outputs equal those of a plain full-resolution reference on the
same inputs: panoptic map and segments, ``sem_seg`` (AMWC node labels), ``sem_seg_head`` (head
logits), instances, with and without the minimum thing cluster size and ``sem_seg_head``, with the
authors' conventions (the defaults) and the project's variants.

The reference (:func:`reference_outputs`) follows the post-processor's docstring step by step
(``AMWCPostProcessor``; the authors' ``panoptic_seg_affinity.py`` and ``MaskScore`` in
``losses.py``), pixel by pixel at the output size, with nothing of the post-processor's own code:
the AMWC solved per image by ``solve_amwc``, the segment map upsampled and resized by
``F.interpolate``, one boolean mask per segment for the areas and ids, ``F.interpolate`` or
Detectron2's ``sem_seg_postprocess`` for the upsampled logits, ``BitMasks`` for the boxes, and the
instance score summed over each mask and over the grid edges of each segment (or, as the authors'
``MaskScore``, of the mask read at the grid cells' centres). Everything must match exactly
except the scores, which the post-processor sums on the grid (equal up to float32 rounding)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from detectron2.modeling.postprocessing import sem_seg_postprocess  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from detectron2_cops.modeling import AMWCPostProcessor  # noqa: E402
from detectron2_cops.solvers import GridGraph, solve_amwc  # noqa: E402
from detectron2_cops.solvers.synthetic import synthetic_instance  # noqa: E402

K, THINGS, DISTANCES, STRIDE = 6, [0, 1], [1, 3, 8], 4
IS_THING = np.isin(np.arange(K), THINGS)


def _logits(seed, h, w, batch=1):
    """Network-like logits of ``batch`` synthetic scenes on an ``h x w`` grid."""
    sems, cuts = [], [[] for _ in DISTANCES]
    for b in range(batch):
        inst = synthetic_instance(h, w, K, len(THINGS), DISTANCES, seed=seed + b, num_things=8,
                                  num_stuff_regions=5)
        sems.append(torch.from_numpy(-inst.node_costs.T.reshape(K, h, w).copy()))
        for d, m in enumerate(inst.grid.edge_values_to_maps(-inst.edge_costs)):
            cuts[d].append(torch.from_numpy(np.asarray(m, dtype=np.float32)))
    return torch.stack(sems), [torch.stack(c) for c in cuts]


PROJECT = dict(solve_padded_grid=False, area_units="output", resize_mode="nearest-exact",
               logits_resize_mode="bilinear", instance_score_edge_mean="edges")


@pytest.fixture(params=["authors", "project"])
def conventions(request):
    """The post-processor's conventions: its defaults (the authors') or the project's variants."""
    return {} if request.param == "authors" else dict(PROJECT)


def _resize(grid_map, H, W, height, width, mode):
    """A grid map upsampled by STRIDE (nearest), cropped to the image, resized to the output."""
    up = torch.as_tensor(grid_map).repeat_interleave(STRIDE, 0).repeat_interleave(STRIDE, 1)[:H, :W]
    return F.interpolate(up[None, None].double(), size=(height, width), mode=mode)[0, 0].long().numpy()


def reference_outputs(sem_logits, cut_logits, image_sizes, output_sizes, stuff_area=0, instance_area=0,
                      min_thing_cluster_size=1, predict_sem_seg_head=False, solve_padded_grid=True,
                      area_units="input", resize_mode="nearest", logits_resize_mode="nearest",
                      instance_score_edge_mean="positions", local_search=False):
    """The post-processor's outputs computed the plain way (no calibration: costs = -logits)."""
    upsampled = F.interpolate(sem_logits, scale_factor=STRIDE, mode="bilinear", align_corners=False)
    h, w = sem_logits.shape[-2:]
    outputs = []
    for b, ((H, W), (height, width)) in enumerate(zip(image_sizes, output_sizes)):
        hc, wc = (h, w) if solve_padded_grid else (-(-H // STRIDE), -(-W // STRIDE))  # the solved grid
        grid = GridGraph(hc, wc, DISTANCES)
        cut = grid.maps_to_edge_values([m[b, :, :hc, :wc].numpy() for m in cut_logits]).astype(np.float64)
        node_costs = (-sem_logits[b, :, :hc, :wc]).permute(1, 2, 0).reshape(hc * wc, K).numpy()
        sol = solve_amwc(node_costs, grid.edges, -cut.astype(np.float32), IS_THING, local_search=local_search)
        labels = sol.node_labels.astype(np.int64).reshape(hc, wc)
        # A segment is one thing cluster, or all stuff of one class; ordered by first grid pixel.
        key = np.where(IS_THING[labels], sol.instance_ids.reshape(hc, wc), -1 - labels).ravel()
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))
        seg = rank[inverse].reshape(hc, wc)
        seg_class = labels.ravel()[np.sort(first)]
        seg_out = _resize(seg, H, W, height, width, resize_mode)
        label_out = _resize(labels, H, W, height, width, resize_mode)

        crop = upsampled[b, :, :H, :W]
        if logits_resize_mode == "bilinear":
            logits = sem_seg_postprocess(upsampled[b], (H, W), height, width)
        else:
            logits = F.interpolate(crop[None], size=(height, width), mode="nearest")[0]
        panoptic = torch.zeros((height, width), dtype=torch.int32)
        segments_info, masks, classes = [], [], []
        for s, c in enumerate(seg_class.tolist()):
            thing = bool(IS_THING[c])
            mask = torch.from_numpy(seg_out == s)
            area = int(mask.sum())
            limit_area = STRIDE**2 * int((seg == s).sum()) if area_units == "input" else area
            if area == 0 or limit_area < (instance_area if thing else stuff_area):
                continue
            if thing and int((seg == s).sum()) < min_thing_cluster_size:
                continue
            segments_info.append({"id": len(segments_info) + 1, "category_id": c, "isthing": thing, "area": area})
            panoptic[mask] = len(segments_info)
            if thing:
                masks.append(mask)
                classes.append((s, c, len(segments_info)))
        scores = []
        for mask, (s, c, sid) in zip(masks, classes):
            score = float(logits[c][mask].double().mean())
            if instance_score_edge_mean == "edges":
                ends = seg.ravel()[grid.edges]  # [E, 2] segments of each edge's two nodes
                inside = (ends == s).all(axis=1)
                leaving = (ends == s).sum(axis=1) == 1
                score += (cut[leaving].mean() if leaving.any() else 0.0) - (cut[inside].mean() if inside.any() else 0.0)
            else:  # the authors' MaskScore: the output mask at the grid cells' centres, per distance
                big = torch.zeros((STRIDE * h + height, STRIDE * w + width), dtype=torch.bool)
                big[:height, :width] = panoptic == sid
                cell = big[STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE][:h, :w].numpy().ravel()
                for d, m in zip(DISTANCES, cut_logits):
                    g = GridGraph(h, w, [d])
                    values = g.maps_to_edge_values([m[b].numpy()]).astype(np.float64)
                    ends = cell[g.edges]
                    score += (values[ends.sum(axis=1) == 1].sum() - values[ends.all(axis=1)].sum()) / m[b].numel()
            scores.append(score)

        out = {
            "panoptic_seg": (panoptic, segments_info),
            "sem_seg": F.one_hot(torch.from_numpy(label_out), K).permute(2, 0, 1).to(torch.uint8),
        }
        if predict_sem_seg_head:
            out["sem_seg_head"] = logits
        instances = Instances((height, width))
        instances.pred_masks = torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.bool)
        instances.pred_classes = torch.tensor([s["category_id"] for s in segments_info if s["isthing"]],
                                              dtype=torch.int64)
        instances.pred_boxes = Boxes(BitMasks(instances.pred_masks).get_bounding_boxes().tensor)
        instances.scores = torch.tensor(scores, dtype=torch.float32)
        out["instances"] = instances
        outputs.append(out)
    return outputs


def _both(conventions, **kw):
    """The post-processor and the reference with the same settings."""
    kw = dict(conventions, **kw)
    post = AMWCPostProcessor(num_classes=K, thing_ids=THINGS, edge_distances=DISTANCES, common_stride=STRIDE, **kw)

    def ref(sem, cut, sizes, outs=None):
        return reference_outputs(sem, cut, sizes, outs or sizes, **kw)

    return post, ref


def _assert_same(new, ref):
    assert len(new) == len(ref)
    for a, b in zip(new, ref):
        assert set(a) == set(b)
        pa, ia = a["panoptic_seg"]
        pb, ib = b["panoptic_seg"]
        assert pa.dtype == pb.dtype == torch.int32 and torch.equal(pa, pb)
        assert pa.is_contiguous()  # (a strided map would slow every consumer down)
        assert ia == ib
        sa, sb = a["sem_seg"], b["sem_seg"]
        assert sa.dtype == sb.dtype == torch.uint8 and sa.is_contiguous()
        assert torch.equal(sa, sb)
        assert torch.equal(sa.sum(dim=0), torch.ones_like(sa[0]))  # exactly one label per pixel
        if "sem_seg_head" in b:
            ha, hb = a["sem_seg_head"], b["sem_seg_head"]
            assert ha.dtype == torch.float32 and ha.is_contiguous() and torch.equal(ha, hb)
        xa, xb = a["instances"], b["instances"]
        assert xa.image_size == xb.image_size and len(xa) == len(xb)
        assert xa.pred_masks.dtype == torch.bool and torch.equal(xa.pred_masks, xb.pred_masks)
        assert xa.pred_masks.is_contiguous()
        assert xa.pred_classes.dtype == torch.int64 and torch.equal(xa.pred_classes, xb.pred_classes)
        assert torch.equal(xa.pred_boxes.tensor, xb.pred_boxes.tensor)
        assert xa.scores.dtype == torch.float32
        torch.testing.assert_close(xa.scores, xb.scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_outputs_at_image_size(seed, conventions):
    sem, cut = _logits(seed, 30, 44)
    new, ref = _both(conventions, predict_sem_seg_head=True)
    out = new(sem, cut, [(120, 176)])
    _assert_same(out, ref(sem, cut, [(120, 176)]))
    assert len(out[0]["instances"]) > 0


@pytest.mark.parametrize("output_size", [(240, 352), (97, 131), (333, 250)])
def test_same_outputs_resized(output_size, conventions):
    sem, cut = _logits(3, 30, 44)
    new, ref = _both(conventions, stuff_area=500, instance_area=60, predict_sem_seg_head=True)
    _assert_same(new(sem, cut, [(118, 173)], [output_size]), ref(sem, cut, [(118, 173)], [output_size]))


def test_same_outputs_padded_batch(conventions):
    sem, cut = _logits(5, 32, 40, batch=2)
    new, ref = _both(conventions, instance_area=20, predict_sem_seg_head=True)
    sizes, outs = [(125, 160), (90, 101)], [(125, 160), (180, 202)]
    _assert_same(new(sem, cut, sizes, outs), ref(sem, cut, sizes, outs))


def test_same_outputs_without_instances_kept(conventions):
    sem, cut = _logits(7, 20, 24)
    new, ref = _both(conventions, instance_area=10**6)
    out = new(sem, cut, [(80, 96)])
    _assert_same(out, ref(sem, cut, [(80, 96)]))
    assert len(out[0]["instances"]) == 0 and tuple(out[0]["instances"].pred_masks.shape) == (0, 80, 96)


def test_same_outputs_at_the_area_limits(conventions):
    """A segment whose area equals its limit is kept, one pixel less is void (both kinds). With
    the areas in input pixels, the image fills the grid and is not resized, so that the areas in
    ``segments_info`` (output pixels) are the ones compared with the limits."""
    sem, cut = _logits(3, 30, 44)
    size, out_size = ((118, 173), (240, 352)) if conventions else ((120, 176), (120, 176))
    free, _ = _both(conventions)
    info = free(sem, cut, [size], [out_size])[0]["panoptic_seg"][1]
    thing = sorted(s["area"] for s in info if s["isthing"])[len(info) // 4]
    stuff = sorted(s["area"] for s in info if not s["isthing"])[0]
    for extra in (0, 1):
        new, ref = _both(conventions, instance_area=thing + extra, stuff_area=stuff + extra)
        out = new(sem, cut, [size], [out_size])
        _assert_same(out, ref(sem, cut, [size], [out_size]))
        areas = {(s["isthing"], s["area"]) for s in out[0]["panoptic_seg"][1]}
        assert ((True, thing) in areas and (False, stuff) in areas) == (extra == 0)


@pytest.mark.parametrize("output_size", [(118, 173), (240, 352), (97, 131)])
def test_same_outputs_min_thing_cluster_size(output_size, conventions):
    """Thing clusters under the minimum size (grid pixels) are void in both implementations,
    while ``sem_seg`` keeps their node labels."""
    sem, cut = _logits(3, 30, 44)
    new, ref = _both(conventions, min_thing_cluster_size=12, instance_area=5)
    out = new(sem, cut, [(118, 173)], [output_size])
    _assert_same(out, ref(sem, cut, [(118, 173)], [output_size]))
    # The rule removes some thing segment here, so the test is not vacuous.
    plain, _ = _both(conventions, instance_area=5)
    kept = plain(sem, cut, [(118, 173)], [output_size])
    assert len(out[0]["instances"]) < len(kept[0]["instances"])
    assert torch.equal(out[0]["sem_seg"], kept[0]["sem_seg"])


@pytest.mark.parametrize("output_size", [(118, 173), (240, 352), (97, 131)])
def test_same_outputs_without_sem_seg_head(output_size, conventions):
    """``predict_sem_seg_head=False`` drops only ``sem_seg_head``: the instance scores, computed
    from the upsampled logits of the predicted thing classes alone, and all other outputs equal
    the reference's."""
    sem, cut = _logits(3, 30, 44, batch=2)
    new, ref = _both(conventions, instance_area=20, min_thing_cluster_size=2, predict_sem_seg_head=False)
    sizes, outs = [(118, 173), (101, 120)], [output_size, (101, 120)]
    out = new(sem, cut, sizes, outs)
    assert all("sem_seg_head" not in o for o in out)
    _assert_same(out, ref(sem, cut, sizes, outs))
    assert all(len(o["instances"]) > 0 for o in out)
    # Not every class is a predicted thing class here, so the subset path is exercised.
    assert len({int(c) for c in out[0]["instances"].pred_classes}) < K
