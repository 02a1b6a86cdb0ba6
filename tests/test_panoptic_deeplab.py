"""The Panoptic-DeepLab baseline config (Detectron2's own model) in the COPS harness: it resolves
to the COPS CPU recipe's shared settings, trains two iterations through ``tools/train_net.py``'s
``Trainer`` on a tiny synthetic Cityscapes folder, and the project's evaluators score it."""

from __future__ import annotations

import importlib.util
import math
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
pytest.importorskip("cityscapesscripts", reason="cityscapesscripts is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cityscapes_synthetic import register_cityscapes_panoptic, write_cityscapes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "Cityscapes-PanopticSegmentation"
BASELINE = CONFIGS / "panoptic_deeplab_R_18_512x256.yaml"
H, W = 128, 256


def _train_net():
    spec = importlib.util.spec_from_file_location("cops_train_net_pdl", REPO / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(train_net, path, opts=()):
    return train_net.build_config(type("Args", (), {"config_file": str(path), "opts": list(opts)})())


def test_baseline_follows_the_cops_cpu_recipe():
    """Every setting the two models share (data, backbone, decoder widths, augmentation, crops,
    optimiser, schedule, batch, seed) equals the COPS stage-1 config's; the baseline trains for
    COPS stage 1 + stage 2 iterations (equal images seen)."""
    train_net = _train_net()
    pdl = _config(train_net, BASELINE)
    cops = _config(train_net, CONFIGS / "cops_R_18_512x256_pretrain.yaml")
    stage2 = _config(train_net, CONFIGS / "cops_R_18_512x256_fully_differentiable.yaml")
    assert pdl.MODEL.META_ARCHITECTURE == "PanopticDeepLab"
    shared = [
        "DATASETS.TRAIN", "DATASETS.TEST", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.BACKBONE",
        "MODEL.RESNETS", "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MAX_SIZE_TRAIN",
        "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.CROP", "INPUT.RANDOM_FLIP", "INPUT.FORMAT",
        "INPUT.SMALL_INSTANCE_AREA", "INPUT.SMALL_INSTANCE_WEIGHT", "SOLVER.OPTIMIZER", "SOLVER.BASE_LR",
        "SOLVER.WEIGHT_DECAY", "SOLVER.LR_SCHEDULER_NAME", "SOLVER.POLY_LR_POWER", "SOLVER.WARMUP_ITERS",
        "SOLVER.WARMUP_FACTOR", "SOLVER.IMS_PER_BATCH", "SEED",
    ] + [f"MODEL.SEM_SEG_HEAD.{k}" for k in (
        "IN_FEATURES", "PROJECT_FEATURES", "PROJECT_CHANNELS", "ASPP_CHANNELS", "ASPP_DILATIONS",
        "ASPP_DROPOUT", "CONVS_DIM", "HEAD_CHANNELS", "COMMON_STRIDE", "NUM_CLASSES", "LOSS_TYPE",
        "LOSS_TOP_K", "NORM")]
    for key in shared:
        a, b = pdl, cops
        for part in key.split("."):
            a, b = a[part], b[part]
        assert a == b, f"{key}: Panoptic-DeepLab {a!r} != COPS {b!r}"
    for k in ("PROJECT_CHANNELS", "ASPP_CHANNELS", "ASPP_DILATIONS", "CONVS_DIM", "NORM"):
        assert pdl.MODEL.INS_EMBED_HEAD[k] == cops.MODEL.AFFINITY_HEAD[k], k
    assert pdl.MODEL.PANOPTIC_DEEPLAB.STUFF_AREA == cops.MODEL.COPS.STUFF_AREA
    assert stage2.SOLVER.IMS_PER_BATCH == cops.SOLVER.IMS_PER_BATCH
    assert pdl.SOLVER.MAX_ITER == cops.SOLVER.MAX_ITER + stage2.SOLVER.MAX_ITER


def test_baseline_trains_and_is_scored_by_the_project_evaluators(tmp_path):
    from detectron2.evaluation import inference_on_dataset

    train_net = _train_net()
    write_cityscapes(str(tmp_path / "root"), {"train": 2, "val": 2}, size=(H, W), seed=0)
    names = register_cityscapes_panoptic(str(tmp_path / "root"), "_pdl_" + uuid.uuid4().hex[:8])
    cfg = _config(train_net, BASELINE, [
        "DATASETS.TRAIN", (names["train"],), "DATASETS.TEST", (names["val"],),
        "INPUT.MIN_SIZE_TRAIN", (H,), "INPUT.MAX_SIZE_TRAIN", W, "INPUT.MIN_SIZE_TEST", H,
        "INPUT.MAX_SIZE_TEST", W, "INPUT.CROP.SIZE", (H, W), "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.MAX_ITER", 2, "SOLVER.WARMUP_ITERS", 1, "DATALOADER.NUM_WORKERS", 0,
        "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    trainer = train_net.Trainer(cfg, final_eval=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert type(trainer.model).__name__ == "PanopticDeepLab"
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("ins_embed_head.") for k in changed)
    assert any(k.startswith("sem_seg_head.") for k in changed)

    evaluator = train_net.Trainer.build_evaluator(cfg, names["val"], str(tmp_path / "eval"))
    loader = train_net.Trainer.build_test_loader(cfg, names["val"])
    results = inference_on_dataset(trainer.model.eval(), loader, evaluator)
    for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ"):
        assert math.isfinite(results["panoptic_seg"][key]) and 0 <= results["panoptic_seg"][key] <= 100
    assert 0 <= results["sem_seg"]["mIoU"] <= 100
