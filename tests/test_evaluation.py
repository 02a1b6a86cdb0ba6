"""Tests of detectron2_cops.evaluation: PQ without panopticapi (against cityscapesscripts run
directly), mIoU on panoptic datasets, Cityscapes instance AP with the public cityscapesscripts
API (synthetic Cityscapes-layout data), and build_cops_evaluator."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
pytest.importorskip("cityscapesscripts", reason="cityscapesscripts is not installed")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators  # noqa: E402
from detectron2.structures import BitMasks, Instances  # noqa: E402

from conftest import SAMPLE, unique_name  # noqa: E402
from detectron2_cops.config import add_cops_config  # noqa: E402
from detectron2_cops.data.datasets import get_panoptic_metadata  # noqa: E402
from detectron2_cops.data.panoptic_utils import id2rgb, rgb2id  # noqa: E402
from detectron2_cops.evaluation import (  # noqa: E402
    CityscapesInstanceEvaluator,
    PanopticEvaluator,
    PanopticSemSegEvaluator,
    build_cops_evaluator,
    print_panoptic_results,
    pq_compute,
)
from detectron2_cops.evaluation.build import _coco_instances_dataset  # noqa: E402

PQ_KEYS = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]


def _cfg(predict_instances=True, predict_sem_seg_head=True):
    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.MODEL.COPS.PREDICT_INSTANCES = predict_instances
    cfg.MODEL.COPS.PREDICT_SEM_SEG_HEAD = predict_sem_seg_head
    return cfg


@pytest.fixture(scope="module")
def sample(sample_dataset):
    """(name, panoptic metadata, dataset dicts, ground-truth id maps) of the bundled sample."""
    records = DatasetCatalog.get(sample_dataset)
    gts = [rgb2id(np.asarray(Image.open(r["pan_seg_file_name"]).convert("RGB"))) for r in records]
    return sample_dataset, get_panoptic_metadata(sample_dataset), records, gts


def gt_to_label_divisor(ids, segments_info, thing_ids):
    """Perfect prediction: class * 1000 + instance (things), class * 1000 (stuff), -1 void."""
    pred = np.full(ids.shape, -1, np.int64)
    count = {}
    for s in segments_info:
        c = s["category_id"]
        if c in thing_ids:
            count[c] = count.get(c, 0) + 1
            pred[ids == s["id"]] = c * 1000 + count[c]
        else:
            pred[ids == s["id"]] = c * 1000
    return pred


def perturb(pred, segments_info, thing_ids, rng):
    """A wrong prediction: relabel a stuff segment, merge two instances, drop one instance,
    move a band of pixels between segments."""
    pred = pred.copy()
    stuff = sorted({v for v in np.unique(pred) if v >= 0 and v // 1000 not in thing_ids})
    things = sorted({v for v in np.unique(pred) if v >= 0 and v // 1000 in thing_ids})
    c = stuff[0] // 1000
    pred[pred == stuff[0]] = (80 + (c - 80 + 7) % 53) * 1000  # another stuff class (80..132)
    same = [t for t in things if t // 1000 == things[0] // 1000]
    if len(same) >= 2:
        pred[pred == same[1]] = same[0]
    pred[pred == things[-1]] = -1
    H = pred.shape[0]
    band = slice(H // 3, H // 3 + int(rng.integers(10, 40)))
    pred[band][pred[band] == stuff[-1]] = stuff[1]
    return pred


def run_evaluator(evaluator, records, preds, segments_given=None):
    evaluator.reset()
    for k, (r, p) in enumerate(zip(records, preds)):
        inp = {"file_name": r["file_name"], "image_id": r["image_id"]}
        if segments_given is None:
            out = {"panoptic_seg": (torch.from_numpy(p), None)}
        else:
            out = {"panoptic_seg": (torch.from_numpy(p), segments_given[k])}
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def cityscapesscripts_pq(tmp_path, records, preds, info):
    """PQ computed by cityscapesscripts' own entry point on files written here."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    thing_inv = {v: k for k, v in info["thing_dataset_id_to_contiguous_id"].items()}
    stuff_inv = {v: k for k, v in info["stuff_dataset_id_to_contiguous_id"].items()}
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    anns = []
    for r, p in zip(records, preds):
        png = Path(r["file_name"]).stem + ".png"
        Image.fromarray(id2rgb(p + 1)).save(pred_dir / png)
        segs = []
        for v in np.unique(p):
            if v < 0:
                continue
            c = int(v) // 1000
            segs.append({"id": int(v) + 1, "category_id": thing_inv.get(c, stuff_inv.get(c))})
        anns.append({"image_id": r["image_id"], "file_name": png, "segments_info": segs})
    gt = json.loads((SAMPLE / "panoptic.json").read_text())
    gt["annotations"] = anns
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        res = evaluatePanoptic(
            str(SAMPLE / "panoptic.json"),
            str(SAMPLE / "panoptic"),
            str(pred_json),
            str(pred_dir),
            str(tmp_path / "res.json"),
        )
    return {
        f"{m.upper()}{suffix}": 100 * res[group][m]
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))
        for m in ("pq", "sq", "rq")
    }


# ----------------------------------------------------------------------------- PQ
def test_result_keys_match_detectron2_coco_panoptic_evaluator(sample):
    from detectron2.evaluation.panoptic_evaluation import COCOPanopticEvaluator

    src = inspect.getsource(COCOPanopticEvaluator.evaluate)
    d2_keys = re.findall(r'res\["(\w+)"\]\s*=', src)
    assert d2_keys == PQ_KEYS
    name, info, records, gts = sample
    preds = [
        gt_to_label_divisor(i, r["segments_info"], info["thing_ids"]) for i, r in zip(gts, records)
    ]
    res = run_evaluator(PanopticEvaluator(name), records, preds)
    assert list(res.keys()) == ["panoptic_seg"]
    assert list(res["panoptic_seg"].keys()) == d2_keys
    # same constructor signature as Detectron2's (plus a keyword-only option)
    d2_params = list(inspect.signature(COCOPanopticEvaluator.__init__).parameters)
    assert (
        list(inspect.signature(PanopticEvaluator.__init__).parameters)[: len(d2_params)]
        == d2_params
    )


def test_perfect_prediction_is_100(sample, tmp_path):
    name, info, records, gts = sample
    preds = [
        gt_to_label_divisor(i, r["segments_info"], info["thing_ids"]) for i, r in zip(gts, records)
    ]
    out_dir = tmp_path / "out"
    res = run_evaluator(PanopticEvaluator(name, str(out_dir)), records, preds)["panoptic_seg"]
    for k in PQ_KEYS:
        assert res[k] == pytest.approx(100.0), k
    # the prediction files are in output_dir, in the COCO panoptic result format
    pj = json.loads((out_dir / "predictions.json").read_text())
    assert [a["image_id"] for a in pj["annotations"]] == [142238, 439180]
    assert pj["categories"] == json.loads((SAMPLE / "panoptic.json").read_text())["categories"]
    for a, p in zip(pj["annotations"], preds):
        ids = rgb2id(np.asarray(Image.open(out_dir / "predictions" / a["file_name"])))
        np.testing.assert_array_equal(ids, p + 1)
        assert sorted(s["id"] for s in a["segments_info"]) == sorted(
            np.unique(p[p >= 0] + 1).tolist()
        )
        inv = {
            **{v: k for k, v in info["thing_dataset_id_to_contiguous_id"].items()},
            **{v: k for k, v in info["stuff_dataset_id_to_contiguous_id"].items()},
        }
        for s in a["segments_info"]:
            assert s["category_id"] == inv[(s["id"] - 1) // 1000]  # dataset ids, not contiguous


def test_print_panoptic_results_logs_percent_table(caplog):
    res = {
        "All": {"pq": 0.5, "sq": 0.75, "rq": 0.625, "n": 19},
        "Things": {"pq": 0.25, "sq": 0.5, "rq": 0.5, "n": 8},
        "Stuff": {"pq": 0.675, "sq": 0.9, "rq": 0.75, "n": 11},
    }
    with caplog.at_level("INFO", logger="detectron2_cops.evaluation.panoptic_evaluation"):
        print_panoptic_results(res)
    rows = [r for r in caplog.text.splitlines() if r.startswith("|")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert cells[0] == ["", "PQ", "SQ", "RQ", "#categories"]
    assert cells[2:] == [
        ["All", "50.000", "75.000", "62.500", "19"],
        ["Things", "25.000", "50.000", "50.000", "8"],
        ["Stuff", "67.500", "90.000", "75.000", "11"],
    ]


def perturbed_predictions(sample, seed):
    """Seeded perturbations of the sample's ground truth, as label_divisor panoptic maps."""
    name, info, records, gts = sample
    rng = np.random.default_rng(seed)
    return [
        perturb(
            gt_to_label_divisor(i, r["segments_info"], info["thing_ids"]),
            r["segments_info"],
            info["thing_ids"],
            rng,
        )
        for i, r in zip(gts, records)
    ]


def test_perturbed_prediction_equals_cityscapesscripts(sample, tmp_path):
    name, info, records, gts = sample
    preds = perturbed_predictions(sample, seed=0)
    res = run_evaluator(PanopticEvaluator(name), records, preds)["panoptic_seg"]
    expected = cityscapesscripts_pq(tmp_path, records, preds, info)
    assert 20 < res["PQ"] < 95 and res["PQ_st"] < 100 and res["PQ_th"] < 100
    for k in PQ_KEYS:
        assert res[k] == pytest.approx(expected[k], abs=1e-9), k

    # the same prediction given with segments_info (contiguous ids + isthing) scores the same
    seg_preds, seg_infos = [], []
    for p in preds:
        ids = np.zeros(p.shape, np.int64)
        infos = []
        for k, v in enumerate(v for v in np.unique(p) if v >= 0):
            ids[p == v] = k + 1
            infos.append(
                {
                    "id": k + 1,
                    "category_id": int(v) // 1000,
                    "isthing": int(v) // 1000 in info["thing_ids"],
                }
            )
        seg_preds.append(ids)
        seg_infos.append(infos)
    res2 = run_evaluator(PanopticEvaluator(name), records, seg_preds, seg_infos)["panoptic_seg"]
    for k in PQ_KEYS:
        assert res2[k] == pytest.approx(res[k], abs=1e-9), k


def test_pq_compute_multiprocess_equals_single(sample, tmp_path):
    name, info, records, gts = sample
    preds = perturbed_predictions(sample, seed=1)
    out_dir = tmp_path / "o"
    run_evaluator(PanopticEvaluator(name, str(out_dir)), records, preds)
    args = (
        str(SAMPLE / "panoptic.json"),
        str(out_dir / "predictions.json"),
        str(SAMPLE / "panoptic"),
        str(out_dir / "predictions"),
    )
    single = pq_compute(*args)
    multi = pq_compute(*args, num_processes=2)
    for g in ("All", "Things", "Stuff"):
        assert single[g] == pytest.approx(multi[g])
    assert single["per_class"].keys() == multi["per_class"].keys()
    for c, v in single["per_class"].items():
        assert v == pytest.approx(multi["per_class"][c]), c
    assert single["All"]["n"] == single["Things"]["n"] + single["Stuff"]["n"] > 0
    assert 0 < single["All"]["pq"] < 1


# ----------------------------------------------------------------------------- mIoU
def _onehot(sem, num_classes):
    return (
        torch.nn.functional.one_hot(torch.from_numpy(sem), num_classes + 1)[..., :num_classes]
        .permute(2, 0, 1)
        .to(torch.uint8)
    )


def test_sem_seg_evaluator_on_panoptic_ground_truth(sample):
    name, info, records, gts = sample
    rng = np.random.default_rng(2)
    sems = []
    for ids, r in zip(gts, records):
        sem = np.full(ids.shape, 255, np.int64)
        for s in r["segments_info"]:
            sem[ids == s["id"]] = s["category_id"]
        sems.append(sem)
    ev = PanopticSemSegEvaluator(name)
    ev.reset()
    for r, sem in zip(records, sems):
        pred = np.where(sem == 255, 0, sem)
        ev.process([{"file_name": r["file_name"]}], [{"sem_seg": _onehot(pred, 133)}])
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)

    # a noisy prediction: compare with a direct computation of the mean IoU
    preds = []
    for sem in sems:
        pred = np.where(sem == 255, 3, sem)
        noise = rng.random(sem.shape) < 0.2
        pred[noise] = rng.integers(0, 133, size=int(noise.sum()))
        preds.append(pred)
    ev.reset()
    for r, pred in zip(records, preds):
        ev.process([{"file_name": r["file_name"]}], [{"sem_seg": _onehot(pred, 133)}])
    res = ev.evaluate()["sem_seg"]
    gt_all = np.concatenate([s.ravel() for s in sems])
    pr_all = np.concatenate([p.ravel() for p in preds])
    keep = gt_all != 255
    ious = []
    for c in range(133):
        g, p = (gt_all == c) & keep, (pr_all == c) & keep
        if g.sum() == 0:
            continue
        ious.append((g & p).sum() / (g | p).sum())
    assert res["mIoU"] == pytest.approx(100 * np.mean(ious))


# ----------------------------------------------------------------------------- build + COCO AP
def _perfect_outputs(records, gts, info):
    outs = []
    for r, ids in zip(records, gts):
        pred = gt_to_label_divisor(ids, r["segments_info"], info["thing_ids"])
        sem = np.where(pred >= 0, pred // 1000, 0)
        masks, classes = [], []
        for s in r["segments_info"]:
            if s["category_id"] in info["thing_ids"] and not s["iscrowd"]:
                masks.append(ids == s["id"])
                classes.append(s["category_id"])
        inst = Instances(ids.shape)
        inst.pred_masks = torch.from_numpy(np.stack(masks))
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inst.scores = torch.linspace(0.9, 0.5, len(classes))
        inst.pred_boxes = BitMasks(inst.pred_masks).get_bounding_boxes()
        outs.append(
            {
                "panoptic_seg": (torch.from_numpy(pred), None),
                "sem_seg": _onehot(sem, 133),
                "sem_seg_head": _onehot(sem, 133),
                "instances": inst,
            }
        )
    return outs


def test_build_cops_evaluator_coco_sample_end_to_end(sample, tmp_path):
    name, info, records, gts = sample
    ev = build_cops_evaluator(_cfg(predict_instances=False), name, str(tmp_path / "a"))
    assert isinstance(ev, DatasetEvaluators)
    assert [type(e) for e in ev._evaluators] == [
        PanopticEvaluator, PanopticSemSegEvaluator, PanopticSemSegEvaluator
    ]
    assert [e.output_key for e in ev._evaluators[1:]] == ["sem_seg", "sem_seg_head"]
    # Without the head output there is no evaluator for it (it would find no "sem_seg_head").
    ev = build_cops_evaluator(_cfg(predict_instances=False, predict_sem_seg_head=False), name,
                              str(tmp_path / "c"))
    assert [type(e) for e in ev._evaluators] == [PanopticEvaluator, PanopticSemSegEvaluator]
    assert ev._evaluators[1].output_key == "sem_seg"

    ev = build_cops_evaluator(_cfg(predict_instances=True), name, str(tmp_path / "b"))
    types = [type(e) for e in ev._evaluators]
    assert types == [PanopticEvaluator, PanopticSemSegEvaluator, PanopticSemSegEvaluator, COCOEvaluator]
    assert ev._evaluators[3]._metadata.name == f"{name}_instances"
    ev.reset()
    for r, out in zip(records, _perfect_outputs(records, gts, info)):
        ev.process([{"file_name": r["file_name"], "image_id": r["image_id"]}], [out])
    res = ev.evaluate()
    assert res["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert res["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert res["segm"]["AP"] == pytest.approx(100.0)


def test_build_cops_evaluator_unknown_type_and_coco_builtin_mapping(tmp_path):
    name = unique_name("cops_semseg_only")
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(evaluator_type="sem_seg", stuff_classes=["a"], ignore_label=255)
    with pytest.raises(ValueError, match="no evaluator for dataset"):
        build_cops_evaluator(_cfg(), name, str(tmp_path))
    with pytest.raises(ValueError, match="not registered"):
        build_cops_evaluator(_cfg(), "does_not_exist_xyz", str(tmp_path))
    # Detectron2's builtin COCO panoptic maps to its instance dataset (as Panoptic-DeepLab)
    assert _coco_instances_dataset("coco_2017_val_panoptic") == "coco_2017_val"


# ----------------------------------------------------------------------------- Cityscapes
@pytest.fixture()
def cityscapes_like(tmp_path):
    """One synthetic image in Detectron2's Cityscapes panoptic layout, registered like
    detectron2.data.datasets.cityscapes_panoptic does it (with Detectron2's own loader)."""
    from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES
    from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

    root = tmp_path / "cityscapes"
    city, stem = "frankfurt", "frankfurt_000000_000294"
    for d in ("leftImg8bit/val/" + city, "gtFine/val/" + city, "gtFine/cityscapes_panoptic_val"):
        (root / d).mkdir(parents=True)
    H, W = 96, 160
    label = np.zeros((H, W), np.int64)  # Cityscapes label ids; instance ids label*1000+k
    label[: H // 2] = 23  # sky
    label[H // 2 :] = 7  # road
    label[:, :4] = 0  # unlabeled border
    inst = label.copy()
    boxes = {26000: (50, 70, 20, 50), 26001: (55, 80, 90, 125), 24000: (30, 60, 130, 140)}
    for iid, (y0, y1, x0, x1) in boxes.items():
        inst[y0:y1, x0:x1] = iid
        label[y0:y1, x0:x1] = iid // 1000
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
        root / f"leftImg8bit/val/{city}/{stem}_leftImg8bit.png"
    )
    Image.fromarray(inst.astype(np.uint16)).save(
        root / f"gtFine/val/{city}/{stem}_gtFine_instanceIds.png"
    )
    id2train = {c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES}
    train = np.vectorize(lambda v: id2train.get(v, 255))(label).astype(np.uint8)
    Image.fromarray(train).save(root / f"gtFine/val/{city}/{stem}_gtFine_labelTrainIds.png")
    # COCO-format panoptic ground truth (as cityscapesscripts' createPanopticImgs writes it)
    segs, pan = [], np.zeros((H, W), np.int64)
    for v in np.unique(inst):
        if v == 0:
            continue
        pan[inst == v] = v
        segs.append(
            {
                "id": int(v),
                "category_id": int(v if v < 1000 else v // 1000),
                "iscrowd": 0,
                "area": int((inst == v).sum()),
            }
        )
    Image.fromarray(id2rgb(pan)).save(
        root / f"gtFine/cityscapes_panoptic_val/{stem}_gtFine_panoptic.png"
    )
    categories = [
        {"id": c["id"], "name": c["name"], "isthing": c["isthing"], "color": list(c["color"])}
        for c in CITYSCAPES_CATEGORIES
    ]
    gt_json = root / "gtFine/cityscapes_panoptic_val.json"
    gt_json.write_text(
        json.dumps(
            {
                "images": [
                    {"id": stem, "file_name": f"{stem}_leftImg8bit.png", "height": H, "width": W}
                ],
                "annotations": [
                    {
                        "image_id": stem,
                        "file_name": f"{stem}_gtFine_panoptic.png",
                        "segments_info": segs,
                    }
                ],
                "categories": categories,
            }
        )
    )
    meta = {
        "thing_classes": [c["name"] for c in CITYSCAPES_CATEGORIES],
        "stuff_classes": [c["name"] for c in CITYSCAPES_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES if not c["isthing"]
        },
    }
    name = unique_name("cops_cityscapes")
    image_dir, gt_dir = str(root / "leftImg8bit/val"), str(root / "gtFine/cityscapes_panoptic_val")
    DatasetCatalog.register(
        name, lambda: load_cityscapes_panoptic(image_dir, gt_dir, str(gt_json), meta)
    )
    MetadataCatalog.get(name).set(
        panoptic_root=gt_dir,
        image_root=image_dir,
        panoptic_json=str(gt_json),
        gt_dir=str(root / "gtFine/val"),
        evaluator_type="cityscapes_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **meta,
    )
    return name, inst, boxes


def _cityscapes_outputs(inst, boxes, drop=()):
    H, W = inst.shape
    pred = np.full((H, W), -1, np.int64)
    stuff_train = {23: 10, 7: 0}
    for lid, t in stuff_train.items():
        pred[inst == lid] = t * 1000
    masks, classes = [], []
    for k, iid in enumerate(boxes):
        t = {26: 13, 24: 11}[iid // 1000]
        pred[inst == iid] = t * 1000 + k + 1
        if iid not in drop:
            masks.append(inst == iid)
            classes.append(t)
    instances = Instances((H, W))
    instances.pred_masks = torch.from_numpy(np.stack(masks))
    instances.pred_classes = torch.tensor(classes)
    instances.scores = torch.linspace(0.9, 0.6, len(classes))
    sem = np.where(pred >= 0, pred // 1000, 0)
    return {
        "panoptic_seg": (torch.from_numpy(pred), None),
        "sem_seg": _onehot(sem, 19),
        "sem_seg_head": _onehot(np.zeros_like(sem), 19),
        "instances": instances,
    }


def test_cityscapes_instance_evaluator_files_and_ap(cityscapes_like):
    name, inst, boxes = cityscapes_like
    record = DatasetCatalog.get(name)[0]
    ev = build_cops_evaluator(_cfg(), name, None)
    assert [type(e) for e in ev._evaluators] == [
        PanopticEvaluator,
        PanopticSemSegEvaluator,
        PanopticSemSegEvaluator,
        CityscapesInstanceEvaluator,
    ]
    inp = {"file_name": record["file_name"], "image_id": record["image_id"]}
    ev.reset()
    city_ev = ev._evaluators[3]
    ev.process([inp], [_cityscapes_outputs(inst, boxes)])
    # prediction files: one line per instance "<png> <label id> <score>", binary mask PNGs
    pred_txt = Path(city_ev.prediction_dir) / "frankfurt_000000_000294_leftImg8bit_pred.txt"
    lines = [ln.split() for ln in pred_txt.read_text().splitlines()]
    assert [(ln[0], ln[1]) for ln in lines] == [
        ("frankfurt_000000_000294_leftImg8bit_0_car.png", "26"),
        ("frankfurt_000000_000294_leftImg8bit_1_car.png", "26"),
        ("frankfurt_000000_000294_leftImg8bit_2_person.png", "24"),
    ]
    assert float(lines[0][2]) == pytest.approx(0.9)
    mask = np.asarray(Image.open(Path(city_ev.prediction_dir) / lines[2][0]))
    np.testing.assert_array_equal(mask, (inst == 24000).astype(np.uint8) * 255)
    res = ev.evaluate()
    assert res["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert res["sem_seg"]["mIoU"] == pytest.approx(100.0)
    # the head output is all "road": only road's IoU is non-zero
    assert res["sem_seg_head"]["mIoU"] < 50.0 and res["sem_seg_head"]["IoU-road"] > 0
    assert res["segm"]["AP"] == pytest.approx(100.0) and res["segm"]["AP50"] == pytest.approx(100.0)

    # one car missed: car AP drops to 50 (one of two found, perfect precision), person stays 100
    city = CityscapesInstanceEvaluator(name)
    city.reset()
    city.process([inp], [_cityscapes_outputs(inst, boxes, drop=(26001,))])
    res = city.evaluate()
    assert res["segm"]["AP"] == pytest.approx((50.0 + 100.0) / 2)


def test_cityscapes_instance_evaluator_missing_gt(tmp_path):
    name = unique_name("cops_city_nogt")
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(gt_dir=str(tmp_path), thing_classes=["car"])
    ev = CityscapesInstanceEvaluator(name)
    ev.reset()
    with pytest.raises(ValueError, match="no ground truth"):
        ev.evaluate()


# ----------------------------------------------------------------------------- bad input
def _inputs(records, with_size=True):
    keys = ("file_name", "image_id", "height", "width") if with_size else ("file_name", "image_id")
    return [{k: r[k] for k in keys} for r in records]


def _perfect_preds(sample):
    name, info, records, gts = sample
    return [gt_to_label_divisor(g, r["segments_info"], info["thing_ids"]) for g, r in zip(gts, records)]


def _process_all(ev, inputs, preds, segments=None):
    ev.reset()
    for k, (inp, p) in enumerate(zip(inputs, preds)):
        ev.process([inp], [{"panoptic_seg": (torch.from_numpy(p), None if segments is None else segments[k])}])


def _segments_preds(sample):
    """Perfect predictions as (id map, segments_info with contiguous ids and isthing)."""
    name, info, records, gts = sample
    maps, infos = [], []
    for g, r in zip(gts, records):
        ids = np.zeros(g.shape, np.int64)
        segs = []
        for k, s in enumerate(r["segments_info"]):
            ids[g == s["id"]] = k + 1
            segs.append({"id": k + 1, "category_id": s["category_id"], "isthing": s["isthing"]})
        maps.append(ids)
        infos.append(segs)
    return maps, infos


def test_panoptic_evaluator_process_refuses_bad_predictions(sample):
    """Shape (against the ground-truth PNG, with or without the input's height/width), dtype,
    classes and image: refused in process, before anything is recorded or scored."""
    name, info, records, gts = sample
    p = _perfect_preds(sample)[0]
    maps, infos = _segments_preds(sample)
    size_msg = r"panoptic_seg\[0\] must be an integer map of the size \[H, W\] = \[427, 640\]"
    cases = [
        (p[:1], None, size_msg),  # 1 x W: cityscapesscripts would broadcast it (PQ > 100)
        (p[:, :1], None, size_msg),
        (p[::2, ::2], None, size_msg),
        (p.T.copy(), None, size_msg),
        (np.zeros((0, 5), np.int64), None, size_msg),
        (p.astype(np.float32), None, "and dtype float32"),
        (np.full_like(p, 999 * 1000), None, "predicted contiguous class 999 is not a class of"),
        (np.full_like(p, -5), None, "predicted contiguous class -1 is not a class of"),
        (maps[0], [dict(s, category_id=999) for s in infos[0]], "contiguous class 999"),
        (maps[0], [dict(s, isthing=None, category_id=0) for s in infos[0]], "dataset class 0"),
    ]
    ev = PanopticEvaluator(name)
    ev.reset()
    for with_size in (True, False):
        for img, segs, match in cases:
            with pytest.raises(ValueError, match=r"000000142238.jpg' \(image_id 142238\).*" + match):
                ev.process(_inputs(records[:1], with_size), [{"panoptic_seg": (torch.from_numpy(img), segs)}])
    unknown = dict(_inputs(records[:1])[0], image_id=123, file_name="other.jpg")
    with pytest.raises(ValueError, match=r"'other.jpg' \(image_id 123\) is not an image of the ground truth"):
        ev.process([unknown], [{"panoptic_seg": (torch.from_numpy(p), None)}])
    assert ev._predictions == []  # nothing half-recorded


def test_panoptic_evaluator_evaluate_refuses_missing_and_repeated_images(sample):
    name, info, records, gts = sample
    preds = _perfect_preds(sample)
    ev = PanopticEvaluator(name)
    _process_all(ev, _inputs(records[:1]), preds[:1])
    with pytest.raises(ValueError, match=r"1 ground-truth images have no prediction \(e.g. image ids \[439180\]\)"):
        ev.evaluate()
    # an image predicted twice (e.g. by two processes with a sampler that repeats images)
    _process_all(ev, _inputs(records + records[:1]), preds + preds[:1])
    with pytest.raises(ValueError, match=r"InferenceSampler\): images \[142238\] were predicted more than once"):
        ev.evaluate()


def test_panoptic_segments_info_with_numpy_ids_scores_like_ints(sample):
    name, info, records, gts = sample
    maps, infos = _segments_preds(sample)
    np_infos = [[dict(s, id=np.int64(s["id"]), category_id=np.int32(s["category_id"])) for s in i]
                for i in infos]
    ev = PanopticEvaluator(name)
    _process_all(ev, _inputs(records), maps, np_infos)
    res = ev.evaluate()["panoptic_seg"]
    for k in PQ_KEYS:
        assert res[k] == pytest.approx(100.0), k


def test_panoptic_images_with_the_same_basename_do_not_overwrite_each_other(sample, tmp_path):
    name, info, records, gts = sample
    preds = _perfect_preds(sample)
    inputs = _inputs(records)
    inputs[0]["file_name"] = "/data/a/frame.jpg"
    inputs[1]["file_name"] = "/data/b/frame.jpg"
    for order in ([0, 1], [1, 0]):
        out = tmp_path / f"o{order[0]}"
        ev = PanopticEvaluator(name, str(out))
        _process_all(ev, [inputs[i] for i in order], [preds[i] for i in order])
        res = ev.evaluate()["panoptic_seg"]
        for k in PQ_KEYS:
            assert res[k] == pytest.approx(100.0), (order, k)
        names = {a["image_id"]: a["file_name"] for a in json.loads((out / "predictions.json").read_text())["annotations"]}
        assert names == {142238: "frame_id142238.png", 439180: "frame_id439180.png"}


def test_ground_truth_without_area_is_scored_from_the_png(sample, register_sample_copy, tmp_path):
    name, info, records, gts = sample

    def copy_without(drop_keys, set_values=None):
        """A registered copy of the sample whose json segments lack drop_keys."""

        def edit(_, data):
            for a in data["annotations"]:
                for s in a["segments_info"]:
                    for key in drop_keys:
                        s.pop(key, None)
                    s.update(set_values or {})

        return register_sample_copy(edit, prefix="cops_eval_noarea")

    preds = perturbed_predictions(sample, seed=3)
    expected = run_evaluator(PanopticEvaluator(name), records, preds)["panoptic_seg"]
    assert 20 < expected["PQ"] < 95
    no_area, folder = copy_without(["area"])
    res = run_evaluator(PanopticEvaluator(no_area), records, preds)["panoptic_seg"]
    assert res == expected  # the json's areas are the PNG's pixel counts: bit-for-bit the same
    # pq_compute itself, on the json without areas (iscrowd missing too: counts as 0)
    out = tmp_path / "out"
    run_evaluator(PanopticEvaluator(name, str(out)), records, preds)
    args = (str(SAMPLE / "panoptic.json"), str(out / "predictions.json"), str(SAMPLE / "panoptic"), str(out / "predictions"))
    with_area = pq_compute(*args)
    assert pq_compute(str(folder / "panoptic.json"), *args[1:]) == with_area
    _, folder2 = copy_without(["area", "iscrowd"])
    _, folder3 = copy_without([], {"iscrowd": 0})
    no_crowd = pq_compute(str(folder2 / "panoptic.json"), *args[1:])
    assert no_crowd == pq_compute(str(folder3 / "panoptic.json"), *args[1:])
    assert no_crowd["All"]["pq"] != with_area["All"]["pq"]  # the sample has crowd segments


def test_pq_compute_refuses_inconsistent_prediction_json(sample, tmp_path):
    name, info, records, gts = sample
    out = tmp_path / "out"
    run_evaluator(PanopticEvaluator(name, str(out)), records, _perfect_preds(sample))
    pred_json = json.loads((out / "predictions.json").read_text())

    def run(modify):
        pj = json.loads(json.dumps(pred_json))
        modify(pj)
        path = tmp_path / f"{unique_name('p')}.json"
        path.write_text(json.dumps(pj))
        return pq_compute(str(SAMPLE / "panoptic.json"), str(path), str(SAMPLE / "panoptic"), str(out / "predictions"))

    with pytest.raises(ValueError, match=r"images \[142238\] were predicted more than once"):
        run(lambda pj: pj["annotations"].append(dict(pj["annotations"][0])))
    with pytest.raises(ValueError, match=r"1 predictions are for images not in the ground truth \(e.g. image ids \[7\]\)"):
        run(lambda pj: pj["annotations"].append(dict(pj["annotations"][0], image_id=7)))
    with pytest.raises(ValueError, match=r"1 ground-truth images have no prediction \(e.g. image ids \[439180\]\)"):
        run(lambda pj: pj["annotations"].pop())
    with pytest.raises(ValueError, match=r"image 142238: segment ids \[\d+\] appear more than once"):
        run(lambda pj: pj["annotations"][0]["segments_info"].append(dict(pj["annotations"][0]["segments_info"][0])))
    with pytest.raises(ValueError, match=r"image 142238.*size \(height, width\) \(360, 640\).*\(427, 640\)"):
        run(lambda pj: pj["annotations"][0].update(file_name=pj["annotations"][1]["file_name"]))
    # cityscapesscripts' own check, with the image and segment named
    with pytest.raises(KeyError, match=r"image with ID 439180 segment with ID \d+ has unknown category_id 999"):
        run(lambda pj: pj["annotations"][1]["segments_info"][0].update(category_id=999))


def test_cityscapes_instance_evaluator_refuses_bad_instances(cityscapes_like):
    """Masks of the wrong size (against the ground-truth PNG, whatever the input or the
    Instances say), non-binary masks, classes outside thing_classes, non-finite scores."""
    name, inst, boxes = cityscapes_like
    record = DatasetCatalog.get(name)[0]
    H, W = inst.shape
    ev = CityscapesInstanceEvaluator(name)
    ev.reset()
    good = _cityscapes_outputs(inst, boxes)["instances"]
    masks = good.pred_masks
    cases = [
        ("pred_masks", masks[:, :1], r"pred_masks must have shape \[N, H, W\] = \[3, 96, 160\] .*got \[3, 1, 160\]"),
        ("pred_masks", masks[:, :10, :10], r"pred_masks .*got \[3, 10, 10\]"),
        ("pred_masks", masks.float() * 0.7, r"pred_masks must be binary \(bool, or 0/1\)"),
        ("pred_classes", torch.tensor([13, -1, 11]), r"pred_classes must lie in \[0, 19\), got \[13, -1, 11\]"),
        ("pred_classes", torch.tensor([13, 99, 11]), r"pred_classes must lie in \[0, 19\)"),
        ("pred_classes", torch.tensor([13.0, 13.0, 11.0]), r"pred_classes must be \[N\] integers"),
        ("scores", torch.tensor([0.9, float("nan"), 0.5]), r"scores must be \[N\] finite"),
    ]
    for input in ({"file_name": record["file_name"], "height": H, "width": W}, {"file_name": record["file_name"]}):
        for key, value, match in cases:
            fields = {k: good.get(k) for k in ("pred_masks", "pred_classes", "scores")}
            fields[key] = value
            instances = Instances(tuple(value.shape[1:]) if key == "pred_masks" else (H, W), **fields)
            with pytest.raises(ValueError, match=r"instances of image '.*_leftImg8bit.png': " + match):
                ev.process([input], [{"instances": instances}])
    assert os.listdir(ev.prediction_dir) == []  # nothing written
    # 0/1 uint8 masks are valid and score like bool masks
    out = _cityscapes_outputs(inst, boxes)
    out["instances"].pred_masks = masks.to(torch.uint8)
    ev.process([{"file_name": record["file_name"]}], [out])
    assert ev.evaluate()["segm"]["AP"] == pytest.approx(100.0)


def test_sem_seg_evaluator_refuses_bad_predictions(sample):
    """Wrong class count or size (against the ground-truth PNG), NaN, not a tensor, an image
    of another dataset: refused before anything is counted."""
    name, info, records, gts = sample
    H, W = gts[0].shape
    ev = PanopticSemSegEvaluator(name)
    ev.reset()
    shape_msg = r"must be a real torch.Tensor of shape \[K, H, W\] = \[133, 427, 640\]"
    cases = [
        (torch.zeros(2, H, W), shape_msg + r".*of shape \[2, 427, 640\]"),
        (torch.zeros(133, 1, 1), shape_msg + r".*of shape \[133, 1, 1\]"),  # would broadcast
        (torch.zeros(133, W, H), shape_msg),
        (torch.zeros(133, H, W, dtype=torch.complex64), shape_msg),
        (np.zeros((133, H, W), np.float32), shape_msg + ".*got numpy.ndarray"),
        (torch.tensor(float("nan")).expand(133, H, W), "has NaN or infinite values"),  # argmax: 0
    ]
    for with_size in (True, False):
        for pred, match in cases:
            with pytest.raises(ValueError, match=r"outputs\['sem_seg'\] of image '.*000000142238.jpg'.*" + match):
                ev.process(_inputs(records[:1], with_size), [{"sem_seg": pred}])
    with pytest.raises(ValueError, match="not an image of dataset"):
        ev.process([{"file_name": "elsewhere.jpg"}], [{"sem_seg": torch.zeros(133, H, W)}])
    assert ev._conf_matrix.sum() == 0  # nothing was counted
