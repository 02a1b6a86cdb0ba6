"""The Cityscapes path of COPS on a tiny synthetic folder in the official Cityscapes layout
(written by tests/cityscapes_synthetic.py, panoptic files by cityscapesscripts'
createPanopticImgs), loaded through Detectron2's builtin Cityscapes panoptic loader: the
mapper's targets, a training step, evaluation (PQ, mIoU of both semantic outputs, Cityscapes AP),
evaluation of a 2048x1024 frame with a model that runs at 512x256, and evaluation subsets."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
pytest.importorskip("cityscapesscripts", reason="cityscapesscripts is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from PIL import Image  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from detectron2_cops.config import add_cops_config  # noqa: E402
from detectron2_cops.data import COPSDatasetMapper, get_panoptic_metadata  # noqa: E402
from detectron2_cops.data.subsets import evenly_spaced, register_panoptic_subset  # noqa: E402
from detectron2_cops.evaluation import build_cops_evaluator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cityscapes_synthetic import register_cityscapes_panoptic, write_cityscapes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "Cityscapes-PanopticSegmentation" / "cops_R_18_512x256_pretrain.yaml"
H, W = 128, 256  # synthetic frames (the real ones are 256x512)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One PyTorch thread: on a loaded 2-core machine several threads per process make the
    convolutions over ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    """``{"root", "train", "val"}``: the synthetic folder and its dataset names."""
    root = tmp_path_factory.mktemp("cs_root")
    write_cityscapes(str(root), {"train": 3, "val": 2}, size=(H, W), seed=0)
    names = register_cityscapes_panoptic(str(root), "_" + uuid.uuid4().hex[:8])
    return {"root": str(root), **names}


def _cfg(cs, **extra):
    if not CONFIG.is_file():
        pytest.skip(f"{CONFIG} not found")
    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", (cs["train"],), "DATASETS.TEST", (cs["val"],),
            "INPUT.MIN_SIZE_TRAIN", (H,), "INPUT.MAX_SIZE_TRAIN", W,
            "INPUT.MIN_SIZE_TEST", H, "INPUT.MAX_SIZE_TEST", W,
            "INPUT.CROP.SIZE", (H, W), "INPUT.RANDOM_FLIP", "none",
            "MODEL.DEVICE", "cpu", "MODEL.COPS.NUM_THREADS", 1,
        ]
    )
    for k, v in extra.items():
        cfg.merge_from_list([k, v])
    return cfg


def test_builtin_loader_reads_the_synthetic_layout(cs):
    records = DatasetCatalog.get(cs["val"])
    assert len(records) == 2
    r = records[0]
    assert r["file_name"].endswith("_leftImg8bit.png") and os.path.isfile(r["pan_seg_file_name"])
    info = get_panoptic_metadata(cs["val"])
    assert info["thing_ids"] == list(range(11, 19)) and info["class_ids"] == list(range(19))
    assert info["label_divisor"] == 1000 and info["ignore_label"] == 255
    # the crowd of persons (instance id 24 = label id) is iscrowd, the instances are not
    persons = [s for s in r["segments_info"] if s["category_id"] == 11]
    assert sorted(s["iscrowd"] for s in persons)[0] == 0 and max(s["iscrowd"] for s in persons) == 1


def test_mapper_targets_agree_with_cityscapes_label_files(cs):
    cfg = _cfg(cs)
    mapper = COPSDatasetMapper(cfg, True)
    for record in DatasetCatalog.get(cs["train"]):
        out = mapper(record)
        assert tuple(out["image"].shape) == (3, H, W)
        # semantic target from the panoptic PNG == cityscapesscripts' labelTrainIds file
        train_ids = np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), train_ids)
        # one mask per non-crowd segment on the stride-4 grid, crowd listed separately
        segs = [s for s in record["segments_info"] if not s["iscrowd"]]
        assert sorted(out["gt_classes"].tolist()) == sorted(s["category_id"] for s in segs)
        assert tuple(out["gt_masks"].shape[1:]) == (H // 4, W // 4)
        assert len(out["crowd_ids"]) == 1
        ids = out["panoptic_ids"].numpy()
        # void (ego vehicle, label 0) is not a segment on the grid
        assert ids.shape == (H // 4, W // 4)
        assert len(out["affinity_targets"]) == len(cfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES)


def _model(cfg, seed=0):
    """A randomly initialised model whose calibrated edge costs favour joining (edge bias -5:
    ``c_E = 5 - cut_logit``), so that the AMWC of random logits gives a few large segments
    instead of thousands of tiny ones (which only make the evaluation slow)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        model.calibration.edge_bias.fill_(-5.0)
    return model


def test_train_step_and_evaluation_on_cityscapes_folder(cs, tmp_path):
    cfg = _cfg(cs)
    model = _model(cfg)
    mapper = COPSDatasetMapper(cfg, True)
    batch = [mapper(r) for r in DatasetCatalog.get(cs["train"])[:2]]
    model.train()
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and "loss_sem_seg" in losses
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    model.eval()
    evaluator = build_cops_evaluator(cfg, cs["val"], str(tmp_path / "eval"))
    loader = [[COPSDatasetMapper(cfg, False)(r)] for r in DatasetCatalog.get(cs["val"])]
    res = inference_on_dataset(model, loader, evaluator)
    for task, key in (
        ("panoptic_seg", "PQ"), ("panoptic_seg", "PQ_th"), ("panoptic_seg", "PQ_st"),
        ("sem_seg", "mIoU"), ("sem_seg_head", "mIoU"), ("segm", "AP"),
    ):
        assert np.isfinite(res[task][key]) and 0.0 <= res[task][key] <= 100.0, (task, key)
    assert (tmp_path / "eval" / "predictions.json").is_file()


def test_sem_seg_is_amwc_node_labels_and_head_output_separate(cs):
    cfg = _cfg(cs)
    model = _model(cfg, seed=1).eval()
    record = DatasetCatalog.get(cs["val"])[0]
    inputs = [COPSDatasetMapper(cfg, False)(record)]
    with torch.no_grad():
        (out,) = model(inputs)
        logits = model.sem_seg_head.layers(model.backbone(model.preprocess_image(inputs).tensor))
    sem, head = out["sem_seg"], out["sem_seg_head"]
    assert sem.shape == head.shape == (19, H, W)
    # sem_seg: one-hot AMWC node labels; sem_seg_head: the head's logits, upsampled by the stride
    assert sem.dtype == torch.uint8 and head.dtype == torch.float32
    assert set(sem.unique().tolist()) <= {0, 1} and (sem.sum(0) == 1).all()
    up = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)[0, :, :H, :W]
    torch.testing.assert_close(head, up)
    # every kept panoptic segment carries its AMWC class in sem_seg
    pan, info = out["panoptic_seg"]
    labels = sem.argmax(0)
    for s in info:
        assert (labels[pan == s["id"]] == s["category_id"]).all()


def test_full_resolution_2048x1024_frame_with_a_512x256_model(tmp_path):
    """--eval-only on 2048x1024 Cityscapes frames with the 512x256 model: the mapper resizes to
    INPUT.MIN_SIZE_TEST (256, as Detectron2's ResizeShortestEdge), the outputs come back at
    2048x1024 and the evaluators score them against the full-resolution ground truth."""
    root = tmp_path / "full"
    write_cityscapes(str(root), {"val": 1}, size=(1024, 2048), seed=3)
    names = register_cityscapes_panoptic(str(root), "_full_" + uuid.uuid4().hex[:8])
    if not CONFIG.is_file():
        pytest.skip(f"{CONFIG} not found")
    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(CONFIG))  # MIN_SIZE_TEST 256, MAX_SIZE_TEST 512: the training scale
    cfg.merge_from_list(["DATASETS.TEST", (names["val"],), "MODEL.COPS.NUM_THREADS", 1])
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (256, 512)
    model = _model(cfg, seed=2).eval()
    record = DatasetCatalog.get(names["val"])[0]
    inp = COPSDatasetMapper(cfg, False)(record)
    assert tuple(inp["image"].shape) == (3, 256, 512)
    assert (inp["height"], inp["width"]) == (1024, 2048)
    evaluator = build_cops_evaluator(cfg, names["val"], str(tmp_path / "eval"))
    evaluator.reset()
    with torch.no_grad():
        (out,) = model([inp])
    assert tuple(out["panoptic_seg"][0].shape) == (1024, 2048)
    assert tuple(out["sem_seg"].shape) == (19, 1024, 2048)
    assert out["instances"].image_size == (1024, 2048)
    evaluator.process([inp], [out])
    res = evaluator.evaluate()
    assert {"panoptic_seg", "sem_seg", "sem_seg_head", "segm"} <= set(res)
    assert np.isfinite(res["panoptic_seg"]["PQ"]) and np.isfinite(res["sem_seg"]["mIoU"])


def test_evaluation_subset_has_its_own_ground_truth(cs, tmp_path):
    assert evenly_spaced(10, 3) == [0, 3, 6] and evenly_spaced(2, 5) == [0, 1]
    for total, count in ((4, 0), (4, 1.0), (-1, 2)):
        with pytest.raises(ValueError, match="must be"):
            evenly_spaced(total, count)
    name = register_panoptic_subset(cs["val"], "cs_sub_" + uuid.uuid4().hex[:6], [1], str(tmp_path))
    meta = MetadataCatalog.get(name)
    records = DatasetCatalog.get(name)
    assert len(records) == 1 and records[0] == DatasetCatalog.get(cs["val"])[1]
    import json

    with open(meta.panoptic_json) as f:
        assert [a["image_id"] for a in json.load(f)["annotations"]] == [records[0]["image_id"]]
    gts = sorted(Path(meta.gt_dir).rglob("*_gtFine_instanceIds.png"))
    assert [p.name.split("_gtFine")[0] for p in gts] == [records[0]["image_id"]]
    # the full evaluator runs on the subset (one prediction for its one image)
    cfg = _cfg(cs)
    model = _model(cfg).eval()
    ev = build_cops_evaluator(cfg, name, str(tmp_path / "eval"))
    res = inference_on_dataset(model, [[COPSDatasetMapper(cfg, False)(records[0])]], ev)
    assert np.isfinite(res["panoptic_seg"]["PQ"]) and np.isfinite(res["segm"]["AP"])
    # another subset written to the same folder replaces the ground-truth links
    register_panoptic_subset(cs["val"], name, [0], str(tmp_path))
    gts = sorted(Path(MetadataCatalog.get(name).gt_dir).rglob("*_gtFine_instanceIds.png"))
    assert [p.name.split("_gtFine")[0] for p in gts] == [DatasetCatalog.get(cs["val"])[0]["image_id"]]


def test_no_final_eval_drops_only_the_end_of_training_evaluation(cs, tmp_path):
    """``tools/train_net.py --no-final-eval`` (used by tools/run_cops_comparison.py, which
    evaluates each stage itself): with TEST.EVAL_PERIOD 0 the trainer has no EvalHook; without the
    flag, or with a periodic evaluation, Detectron2's EvalHook stays."""
    import importlib.util

    from detectron2.engine import hooks

    spec = importlib.util.spec_from_file_location("cops_train_net_cs", REPO / "tools" / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    assert train_net.argument_parser().parse_args(["--no-final-eval"]).no_final_eval
    assert not train_net.argument_parser().parse_args([]).no_final_eval

    def eval_hooks(final_eval, period):
        cfg = _cfg(cs, **{"OUTPUT_DIR": str(tmp_path), "TEST.EVAL_PERIOD": period, "DATALOADER.NUM_WORKERS": 0})
        trainer = train_net.Trainer(cfg, final_eval=final_eval)
        return sum(isinstance(h, hooks.EvalHook) for h in trainer._hooks)

    assert eval_hooks(True, 0) == 1
    assert eval_hooks(False, 0) == 0
    assert eval_hooks(False, 5) == 1


def test_stage1_training_is_reproducible_with_the_recipes_loader_worker(cs, tmp_path):
    """Same config and SEED, as ``default_setup`` seeds it: bit-identical weights after three
    iterations with random scales, crops and flips done in a loader worker process (the Cityscapes
    recipe's DATALOADER.NUM_WORKERS 1); another SEED gives other weights."""
    import importlib.util

    from detectron2.utils.env import seed_all_rng

    spec = importlib.util.spec_from_file_location("cops_train_net_repro", REPO / "tools" / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)

    def train(seed, out):
        cfg = _cfg(cs, **{
            "SEED": seed, "SOLVER.MAX_ITER": 3, "SOLVER.IMS_PER_BATCH": 2, "DATALOADER.NUM_WORKERS": 1,
            "INPUT.MIN_SIZE_TRAIN": (H - 32, H, H + 32), "INPUT.RANDOM_FLIP": "horizontal",
            "OUTPUT_DIR": str(tmp_path / out),
        })
        seed_all_rng(seed)
        trainer = train_net.Trainer(cfg, final_eval=False)
        trainer.train()
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    first, again, other = train(5, "a"), train(5, "b"), train(6, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
