"""The shipped configs resolve to what their comments promise: the paper's R-52 configs run the
authors' solver, backward and inference conventions, every config loads with the project's keys."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")

from detectron2.config import get_cfg  # noqa: E402

from detectron2_cops.config import add_cops_config  # noqa: E402
from detectron2_cops.panoptic_deeplab import add_panoptic_deeplab_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_CONFIGS = sorted(CONFIGS.glob("*/cops_R_52_*.yaml"))


def _load(path):
    cfg = get_cfg()
    add_cops_config(cfg)
    add_panoptic_deeplab_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def test_every_config_loads():
    paths = [p for p in sorted(CONFIGS.glob("*/*.yaml")) if not p.name.startswith("Base-")]
    assert len(paths) >= 9
    for path in paths:
        assert _load(path).MODEL.META_ARCHITECTURE in ("COPS", "PanopticDeepLab"), path


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_configs_run_the_authors_solver_backward_and_inference(path):
    cops = _load(path).MODEL.COPS
    assert cops.LOCAL_SEARCH is False
    assert cops.BACKWARD_WARM_START is False
    assert cops.BACKWARD_FLOAT32 is True
    assert cops.SOLVE_PADDED_GRID is True
    assert cops.AREA_UNITS == "input"
    assert cops.RESIZE_MODE == "nearest"
    assert cops.LOGITS_RESIZE_MODE == "nearest"
    assert cops.INSTANCE_SCORE_EDGE_MEAN == "positions"


def test_there_are_four_paper_configs():
    assert [f"{p.parent.name}/{p.name}" for p in PAPER_CONFIGS] == [
        "COCO-PanopticSegmentation/cops_R_52_fully_differentiable.yaml",
        "COCO-PanopticSegmentation/cops_R_52_pretrain.yaml",
        "Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml",
        "Cityscapes-PanopticSegmentation/cops_R_52_pretrain.yaml",
    ]
