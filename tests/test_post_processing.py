"""The grid-level AMWC post-processor gives the outputs of the previous full-resolution
implementation (tests/_reference_post_processing.py, main's post_processing.py copied verbatim)
on fixed inputs: panoptic map and segments, ``sem_seg`` (AMWC node labels), ``sem_seg_head``
(head softmax), instances, with and without the minimum thing cluster size.

Two outputs differ from the reference by design and are compared for what their consumers use:
``sem_seg`` is a uint8 one-hot (the reference's float32 one-hot, same values; evaluators and the
visualizer take its ``argmax(dim=0)``), and the instance scores are computed on the grid (the
same linear functional of the logits, summed without the float32 rounding of the upsampled
values, so equal to rounding)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from detectron2_cops.modeling import AMWCPostProcessor  # noqa: E402
from detectron2_cops.solvers.synthetic import synthetic_instance  # noqa: E402

from _reference_post_processing import ReferenceAMWCPostProcessor  # noqa: E402

K, THINGS, DISTANCES = 6, [0, 1], [1, 3, 8]


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


def _both(**kw):
    args = dict(num_classes=K, thing_ids=THINGS, edge_distances=DISTANCES, common_stride=4)
    args.update(kw)
    ref_args = {k: v for k, v in args.items() if k != "predict_sem_seg_head"}  # main: always on
    return AMWCPostProcessor(**args), ReferenceAMWCPostProcessor(**ref_args)


def _assert_same(new, ref):
    assert len(new) == len(ref)
    for a, b in zip(new, ref):
        pa, ia = a["panoptic_seg"]
        pb, ib = b["panoptic_seg"]
        assert pa.dtype == pb.dtype and torch.equal(pa, pb)
        assert pa.is_contiguous()  # (a strided map would slow every consumer down)
        assert ia == ib
        assert set(a) == set(b)
        sa, sb = a["sem_seg"], b["sem_seg"]
        assert sa.dtype == torch.uint8 and sb.dtype == torch.float32 and sa.shape == sb.shape
        assert sa.is_contiguous()
        assert torch.equal(sa.float(), sb)  # the same one-hot values
        assert torch.equal(sa.argmax(dim=0), sb.argmax(dim=0))  # what SemSegEvaluator consumes
        assert torch.equal(sa.sum(dim=0), torch.ones_like(sa[0]))  # exactly one label per pixel
        if "sem_seg_head" in b:
            ha, hb = a["sem_seg_head"], b["sem_seg_head"]
            assert ha.dtype == torch.float32 and ha.is_contiguous() and torch.equal(ha, hb)
        xa, xb = a["instances"], b["instances"]
        assert xa.image_size == xb.image_size and len(xa) == len(xb)
        assert xa.pred_masks.dtype == torch.bool and torch.equal(xa.pred_masks, xb.pred_masks)
        assert xa.pred_masks.is_contiguous()
        assert torch.equal(xa.pred_classes, xb.pred_classes)
        assert torch.equal(xa.pred_boxes.tensor, xb.pred_boxes.tensor)
        torch.testing.assert_close(xa.scores, xb.scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_outputs_at_image_size(seed):
    sem, cut = _logits(seed, 30, 44)
    new, ref = _both()
    out = new(sem, cut, [(120, 176)])
    _assert_same(out, ref(sem, cut, [(120, 176)]))
    assert len(out[0]["instances"]) > 0


@pytest.mark.parametrize("output_size", [(240, 352), (97, 131), (333, 250)])
def test_same_outputs_resized(output_size):
    sem, cut = _logits(3, 30, 44)
    new, ref = _both(stuff_area=500, instance_area=60)
    _assert_same(new(sem, cut, [(118, 173)], [output_size]), ref(sem, cut, [(118, 173)], [output_size]))


def test_same_outputs_padded_batch():
    sem, cut = _logits(5, 32, 40, batch=2)
    new, ref = _both(instance_area=20)
    sizes, outs = [(125, 160), (90, 101)], [(125, 160), (180, 202)]
    _assert_same(new(sem, cut, sizes, outs), ref(sem, cut, sizes, outs))


def test_same_outputs_without_instances_kept():
    sem, cut = _logits(7, 20, 24)
    new, ref = _both(instance_area=10**6)
    out = new(sem, cut, [(80, 96)])
    _assert_same(out, ref(sem, cut, [(80, 96)]))
    assert len(out[0]["instances"]) == 0 and tuple(out[0]["instances"].pred_masks.shape) == (0, 80, 96)


@pytest.mark.parametrize("output_size", [(118, 173), (240, 352), (97, 131)])
def test_same_outputs_min_thing_cluster_size(output_size):
    """Thing clusters under the minimum size (grid pixels) are void in both implementations,
    while ``sem_seg`` keeps their node labels."""
    sem, cut = _logits(3, 30, 44)
    new, ref = _both(min_thing_cluster_size=12, instance_area=5)
    out = new(sem, cut, [(118, 173)], [output_size])
    _assert_same(out, ref(sem, cut, [(118, 173)], [output_size]))
    # The rule removes some thing segment here, so the test is not vacuous.
    plain, _ = _both(instance_area=5)
    kept = plain(sem, cut, [(118, 173)], [output_size])
    assert len(out[0]["instances"]) < len(kept[0]["instances"])
    assert torch.equal(out[0]["sem_seg"], kept[0]["sem_seg"])


@pytest.mark.parametrize("output_size", [(118, 173), (240, 352), (97, 131)])
def test_same_outputs_without_sem_seg_head(output_size):
    """``predict_sem_seg_head=False`` drops only ``sem_seg_head``: the instance scores, computed
    from the upsampled logits of the predicted thing classes alone, and all other outputs equal
    the reference's."""
    sem, cut = _logits(3, 30, 44, batch=2)
    new, ref = _both(instance_area=20, min_thing_cluster_size=2, predict_sem_seg_head=False)
    sizes, outs = [(118, 173), (101, 120)], [output_size, (101, 120)]
    out, want = new(sem, cut, sizes, outs), ref(sem, cut, sizes, outs)
    assert all("sem_seg_head" not in o and "sem_seg_head" in w for o, w in zip(out, want))
    for w in want:
        del w["sem_seg_head"]
    _assert_same(out, want)
    assert all(len(o["instances"]) > 0 for o in out)
    # Not every class is a predicted thing class here, so the subset path is exercised.
    assert len({int(c) for c in out[0]["instances"].pred_classes}) < K
