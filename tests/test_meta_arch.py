"""Tests of the COPS meta-architecture, the AMWC post-processor, the package registration and the
YAML configs (build only for the big ones; tiny models for training / inference steps)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from torch.nn import functional as F  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY, build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import detectron2_cops  # noqa: E402
from detectron2_cops.config import add_cops_config  # noqa: E402
from detectron2_cops.data import COPSTargetGenerator, get_panoptic_metadata  # noqa: E402
from detectron2_cops.data.datasets import register_coco_panoptic_folder  # noqa: E402
from detectron2_cops.modeling import (  # noqa: E402
    POST_PROCESSOR_REGISTRY,
    AMWCPostProcessor,
    COPS,
    build_post_processor,
)

from conftest import DISTANCES, INTERVALS, NUM_CLASSES, THING_IDS, tiny_cfg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The bundled sample (datasets/coco_panoptic_sample in the repository); COPS_TEST_DATASETS
# names another dataset root that holds coco_panoptic_sample/.
DATASETS_ROOT = Path(os.environ.get("COPS_TEST_DATASETS", REPO / "datasets"))
SAMPLE = DATASETS_ROOT / "coco_panoptic_sample"
# The COPS configs (a config naming another META_ARCHITECTURE, such as the Panoptic-DeepLab
# baseline, is a different model with its own keys and tests).
ALL_CONFIGS = sorted(
    p for p in (REPO / "configs").rglob("*.yaml") if 'META_ARCHITECTURE: "PanopticDeepLab"' not in p.read_text()
)
SAMPLE_PRETRAIN = REPO / "configs" / "sample" / "cops_R_18_pretrain.yaml"

@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory):
    """The real COCO sample registered under a unique name (symlink to the bundled folder)."""
    if not (SAMPLE / "panoptic.json").is_file():
        pytest.fail(f"the bundled COCO panoptic sample is missing at {SAMPLE} (datasets/coco_panoptic_sample "
                    "in the repository; COPS_TEST_DATASETS overrides its root)")
    name = f"cops_meta_sample_{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("root")
    os.symlink(SAMPLE, root / name)
    register_coco_panoptic_folder(name, str(root))
    return name


def synthetic_input(height: int, width: int, seed: int, *, empty: bool = False, channels: int = 3):
    """One training dict as COPSDatasetMapper produces it, for a synthetic panoptic scene: two
    stuff regions, two instances of class 0, one of class 1 and a crowd region of class 1 (or,
    with ``empty``, no segment at all: everything void)."""
    rng = np.random.default_rng(seed)
    pan = np.zeros((height, width), dtype=np.int64)
    segments = []
    if not empty:
        pan[: height // 2] = 1
        pan[height // 2 :] = 2
        pan[4 : height // 2, 3 : width // 3] = 3
        pan[4 : height // 2, width // 3 : width // 2] = 4
        pan[height // 2 + 2 : height - 3, width // 2 : width - 4] = 5
        pan[height - 3 :, : width // 4] = 6
        segments = [
            {"id": 1, "category_id": 2, "iscrowd": 0},
            {"id": 2, "category_id": 3, "iscrowd": 0},
            {"id": 3, "category_id": 0, "iscrowd": 0},
            {"id": 4, "category_id": 0, "iscrowd": 0},
            {"id": 5, "category_id": 1, "iscrowd": 0},
            {"id": 6, "category_id": 1, "iscrowd": 1},
        ]
    generator = COPSTargetGenerator(
        thing_ids=THING_IDS,
        class_ids=range(NUM_CLASSES),
        edge_distances=DISTANCES,
        edge_sampling_intervals=INTERVALS,
        small_instance_area=64,
    )
    targets = generator(pan, segments)
    colours = rng.integers(0, 255, size=(7, channels))
    image = colours[pan].transpose(2, 0, 1) + rng.integers(0, 20, size=(channels, height, width))
    out = {
        "image": torch.as_tensor(np.clip(image, 0, 255).astype(np.uint8)),
        "height": height,
        "width": width,
    }
    out.update(targets)
    return out


def _grad_norm(p):
    return 0.0 if p.grad is None else float(p.grad.abs().sum())


# ----------------------------------------------------------------------------- configs
def _ensure_sample_registered():
    """The sample YAMLs name ``coco_panoptic_sample``; point it at the bundled sample if its default
    folder (``$DETECTRON2_DATASETS``) is missing."""
    meta = MetadataCatalog.get("coco_panoptic_sample")
    folder = meta.get("dataset_folder")
    if folder is None or not os.path.isdir(folder):
        if not SAMPLE.is_dir():
            pytest.fail(f"the bundled COCO panoptic sample is missing at {SAMPLE} (datasets/coco_panoptic_sample "
                        "in the repository; COPS_TEST_DATASETS overrides its root)")
        register_coco_panoptic_folder("coco_panoptic_sample", str(DATASETS_ROOT), overwrite=True)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_yaml_builds_its_model(path):
    """Every YAML in configs/ loads and builds a COPS model on the CPU (no forward); the fully
    differentiable stage has its AMWC layer, frozen BN and frozen prefixes."""
    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    if "coco_panoptic_sample" in tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST):
        _ensure_sample_registered()
    model = build_model(cfg)
    assert isinstance(model, COPS)
    assert model.sem_seg_head.num_classes == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert model.edge_distances == list(cfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES)
    assert model.fully_differentiable == cfg.MODEL.COPS.FULLY_DIFFERENTIABLE
    if "fully_differentiable" in path.name:
        assert model.fully_differentiable and model.amwc_layer is not None
    if "pretrain" in path.name:
        assert not model.fully_differentiable and model.amwc_layer is None
    if cfg.MODEL.COPS.FREEZE_BN:
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert bns == []
        assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    prefixes = tuple(p + "." for p in cfg.MODEL.COPS.FROZEN_PREFIXES)
    for name, p in model.named_parameters():
        frozen_by_prefix = name.startswith(prefixes) if prefixes else False
        if frozen_by_prefix:
            assert not p.requires_grad, name
    if prefixes:
        assert any(p.requires_grad for p in model.parameters())


def test_sample_configs_are_cpu_sized():
    pre, fd = (REPO / "configs" / "sample" / n for n in ("cops_R_18_pretrain.yaml", "cops_R_18_fully_differentiable.yaml"))
    cfgs = []
    for path in (pre, fd):
        cfg = get_cfg()
        add_cops_config(cfg)
        cfg.merge_from_file(str(path))
        cfgs.append(cfg)
        assert cfg.MODEL.DEVICE == "cpu"
        assert tuple(cfg.DATASETS.TRAIN) == ("coco_panoptic_sample",) == tuple(cfg.DATASETS.TEST)
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133
        assert cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.TEST.EVAL_PERIOD == 0
        assert "SyncBN" not in (cfg.MODEL.RESNETS.NORM, cfg.MODEL.SEM_SEG_HEAD.NORM, cfg.MODEL.AFFINITY_HEAD.NORM)
        assert cfg.SEED >= 0 and not os.path.isabs(cfg.OUTPUT_DIR)
    assert not cfgs[0].MODEL.COPS.FULLY_DIFFERENTIABLE and cfgs[1].MODEL.COPS.FULLY_DIFFERENTIABLE
    # stage 2 starts from the model stage 1 writes
    assert cfgs[1].MODEL.WEIGHTS == os.path.join(cfgs[0].OUTPUT_DIR, "model_final.pth")


# ----------------------------------------------------------------------------- package
def test_package_registers_components():
    assert detectron2_cops.__version__ == "0.1.0"
    assert detectron2_cops.add_cops_config is add_cops_config
    assert META_ARCH_REGISTRY.get("COPS") is COPS
    assert POST_PROCESSOR_REGISTRY.get("AMWCPostProcessor") is AMWCPostProcessor
    from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

    from detectron2_cops.modeling import AFFINITY_HEAD_REGISTRY

    assert SEM_SEG_HEADS_REGISTRY.get("COPSSemSegHead") is not None
    assert AFFINITY_HEAD_REGISTRY.get("AffinityHead") is not None
    assert "coco_panoptic_sample" in DatasetCatalog.list()


def test_package_imports_without_detectron2():
    """With Detectron2 hidden, ``import detectron2_cops`` works (solvers, layers) and the
    Detectron2 parts raise an ImportError that says Detectron2 is required."""
    code = (
        "import sys\n"
        "sys.modules['detectron2'] = None\n"
        "import detectron2_cops\n"
        "assert not detectron2_cops.HAS_DETECTRON2\n"
        "from detectron2_cops.solvers import solve_amwc\n"
        "from detectron2_cops.layers import AMWCLayer\n"
        "assert not any(m.startswith('detectron2.') for m in sys.modules)\n"
        "try:\n"
        "    from detectron2_cops import add_cops_config\n"
        "except ImportError as e:\n"
        "    assert 'Detectron2' in str(e), e\n"
        "    print('OK')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("OK")


# ----------------------------------------------------------------------------- post-processor
def _pp(**kwargs):
    args = dict(
        num_classes=3,
        thing_ids=[1],
        edge_distances=[1],
        edge_sampling_intervals=[1],
        common_stride=4,
        stuff_area=0,
        instance_area=0,
        predict_instances=True,
    )
    args.update(kwargs)
    return AMWCPostProcessor(**args)


def _toy_logits():
    """Grid 6x8: class 0 (stuff) everywhere, two adjacent 2x2 blocks of thing class 1 separated
    by cut edges, two disconnected 2x4 blocks of stuff class 2."""
    sem = torch.zeros(1, 3, 6, 8)
    sem[0, 0] = 5.0
    sem[0, 1, 1:3, 1:5] = 30.0
    sem[0, 2, 4:6, 0:2] = 30.0
    sem[0, 2, 4:6, 6:8] = 30.0
    cut = torch.full((1, 2, 6, 8), -5.0)
    cut[0, 1, 1:3, 2] = 5.0  # channel 1, d = 1: edge (y, 2)-(y, 3): between the two blocks
    return sem, [cut]


def test_post_processor_known_solution():
    sem, cut = _toy_logits()
    (out,) = _pp()(sem, cut, [(24, 32)], [(24, 32)])
    pan, info = out["panoptic_seg"]
    assert pan.dtype == torch.int32 and tuple(pan.shape) == (24, 32)
    grid = np.array(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 2, 2, 3, 3, 1, 1, 1],
            [1, 2, 2, 3, 3, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [4, 4, 1, 1, 1, 1, 4, 4],
            [4, 4, 1, 1, 1, 1, 4, 4],
        ]
    )
    np.testing.assert_array_equal(pan.numpy(), np.kron(grid, np.ones((4, 4), dtype=int)))
    assert info == [
        {"id": 1, "category_id": 0, "isthing": False, "area": 32 * 16},
        {"id": 2, "category_id": 1, "isthing": True, "area": 64},
        {"id": 3, "category_id": 1, "isthing": True, "area": 64},
        {"id": 4, "category_id": 2, "isthing": False, "area": 128},
    ]
    sem_seg = out["sem_seg"]
    assert tuple(sem_seg.shape) == (3, 24, 32)
    assert sem_seg.dtype == torch.uint8 and (sem_seg.sum(0) == 1).all()

    inst = out["instances"]
    assert len(inst) == 2 and inst.image_size == (24, 32)
    assert inst.pred_classes.tolist() == [1, 1]
    assert torch.equal(inst.pred_masks[0], pan == 2) and torch.equal(inst.pred_masks[1], pan == 3)
    assert inst.pred_boxes.tensor.tolist() == [[4.0, 4.0, 12.0, 12.0], [12.0, 4.0, 20.0, 12.0]]
    # MaskScore: mean class logit inside + cut logits leaving - cut logits inside. Each block: 4
    # inner edges at -5; 8 leaving edges, 2 of them (to the other block) at +5. The authors'
    # ("positions", the default) divide both sums by the 2 x 6 x 8 positions of the edge map,
    # "edges" takes the means over the edges.
    up = F.interpolate(sem, scale_factor=4, mode="bilinear", align_corners=False)[0, 1]
    for k in range(2):
        expected = float(up[inst.pred_masks[k]].mean()) + ((2 * 5.0 - 6 * 5.0) - 4 * (-5.0)) / 96
        assert float(inst.scores[k]) == pytest.approx(expected, rel=1e-5)
    (out,) = _pp(instance_score_edge_mean="edges")(sem, cut, [(24, 32)], [(24, 32)])
    for k in range(2):
        expected = float(up[inst.pred_masks[k]].mean()) + (2 * 5.0 - 6 * 5.0) / 8 - (-5.0)
        assert float(out["instances"].scores[k]) == pytest.approx(expected, rel=1e-5)


def test_post_processor_resizes_crops_and_drops_small_segments():
    sem, cut = _toy_logits()
    # Output twice the input size: a 2x2 grid block is 8x8 input pixels -> 256 output pixels.
    (out,) = _pp(instance_area=300, stuff_area=100)(sem, cut, [(24, 32)], [(48, 64)])
    pan, info = out["panoptic_seg"]
    assert tuple(pan.shape) == (48, 64)
    assert [(s["category_id"], s["area"]) for s in info] == [(0, 32 * 16 * 4), (2, 128 * 4)]
    assert sorted(torch.unique(pan).tolist()) == [0, 1, 2]  # the instances became void
    assert (pan == 0).sum() == 2 * 256
    assert len(out["instances"]) == 0 and tuple(out["instances"].pred_masks.shape) == (0, 48, 64)

    # An image of 20x28 pixels in the padded 24x32 batch: only its 5x7 grid pixels are solved.
    (out,) = _pp()(sem, cut, [(20, 28)], [(20, 28)])
    pan, info = out["panoptic_seg"]
    assert tuple(pan.shape) == (20, 28)
    ids = {s["id"] for s in info}
    assert set(torch.unique(pan).tolist()) == ids
    assert {s["category_id"] for s in info} == {0, 1, 2}
    assert sum(s["area"] for s in info) == 20 * 28


def test_post_processor_drops_thing_clusters_under_min_grid_size():
    """Thing clusters under MIN_THING_CLUSTER_SIZE grid pixels are void at inference (the
    authors' IGNORE_INSTANCE_SIZE_AMC // 4), whatever their output area; stuff is kept."""
    sem, cut = _toy_logits()
    for size, n_things in ((4, 2), (5, 0)):
        (out,) = _pp(min_thing_cluster_size=size)(sem, cut, [(24, 32)], [(96, 128)])
        pan, info = out["panoptic_seg"]
        assert sum(s["isthing"] for s in info) == n_things, size
        assert {s["category_id"] for s in info if not s["isthing"]} == {0, 2}
        assert len(out["instances"]) == n_things


def test_post_processor_uses_calibration():
    from detectron2_cops.layers import CostCalibration

    sem, cut = _toy_logits()
    calib = CostCalibration(1)
    with torch.no_grad():
        # c_E = -(l - 6): the edges between the two blocks (l = 5) now favour joining
        calib.edge_bias.fill_(-6.0)
    (out,) = _pp()(sem, cut, [(24, 32)], calibration=calib)
    classes = [s["category_id"] for s in out["panoptic_seg"][1]]
    assert classes == [0, 1, 2]  # the two blocks merge into one instance


def test_post_processor_bad_input():
    """The post-processor is a public component: its constructor and its call check what they
    receive, one error per kind of bad input."""
    sem, cut = _toy_logits()
    pp = _pp()
    for args, match in [
        ((sem[0], cut, [(24, 32)]), r"sem_seg_logits must be a float \[B, K, h, w\] tensor, K = 3, got \[3, 6, 8\]"),
        ((sem[:, :2], cut, [(24, 32)]), r"K = 3, got \[1, 2, 6, 8\]"),
        ((sem.long(), cut, [(24, 32)]), "K = 3, got .* torch.int64"),
        ((sem, cut + cut, [(24, 32)]), "one .* per edge distance"),
        ((sem, [cut[0][..., :7]], [(24, 32)]), r"edge distance 1 .* shape \[1, 2, 6, 8\]"),
        ((sem, [c.to(torch.int32) for c in cut], [(24, 32)]), "edge distance 1 .* must be a float tensor"),
        ((sem, cut, [(28, 32)]), "does not fit"),
        ((sem, cut, [(24, 32), (24, 32)]), "image_sizes must hold one pair"),
        ((sem, cut, [(24, 32, 1)]), "image_sizes must hold one pair"),
        ((sem, cut, [(True, True)]), r"image_sizes\[0\]\[0\] must be an integer, got True"),
        ((sem, cut, [(24.5, 32)]), r"image_sizes\[0\]\[0\] must be an integer, got 24.5"),
        ((sem, cut, [(24, 32)], [(0, 32)]), r"output_sizes\[0\]\[0\] must be >= 1"),
        # float64 logits beyond the float32 range that the solve reads: named as such
        ((sem.double() * 1e39, cut, [(24, 32)]), r"AMWCPostProcessor: the costs .*float32.*finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            pp(*args)
    (ok,) = pp(sem, cut, [(torch.tensor(24), np.int64(32))])  # integer scalars of any kind
    assert ok["panoptic_seg"][0].shape == (24, 32)
    for kwargs, match in [
        (dict(thing_ids=[3]), r"thing_ids must lie in \[0, num_classes=3\)"),
        (dict(thing_ids=[1.7]), r"thing_ids\[0\] must be an integer"),
        (dict(edge_distances=[0]), r"edge_distances \(MODEL.AFFINITY_HEAD.EDGE_DISTANCES\)\[0\] must be >= 1"),
        (dict(edge_distances="1"), "edge_distances .* must be a sequence of integers"),
        (dict(edge_distances=[]), "need at least one edge distance"),
        (dict(edge_sampling_intervals=[1, 1]), "one sampling interval per distance"),
        (dict(num_classes=3.0), r"num_classes \(MODEL.SEM_SEG_HEAD.NUM_CLASSES\) must be an integer"),
        (dict(stuff_area=float("nan")), r"stuff_area \(MODEL.COPS.STUFF_AREA\) must be finite"),
        (dict(instance_area=-1), "instance_area .* must be >= 0"),
        (dict(num_threads=2**31), r"num_threads \(MODEL.COPS.NUM_THREADS\) must be <= 2147483647"),
        (dict(num_threads=None), "num_threads .* must be an integer"),
        (dict(min_thing_cluster_size=0), r"min_thing_cluster_size \(MODEL.COPS.MIN_THING_CLUSTER_SIZE\) must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            _pp(**kwargs)


def test_build_post_processor_from_config(synth_dataset):
    cfg = tiny_cfg(synth_dataset)
    pp = build_post_processor(cfg)
    assert isinstance(pp, AMWCPostProcessor)
    assert pp.thing_ids == THING_IDS and pp.edge_distances == DISTANCES
    assert pp.edge_sampling_intervals == INTERVALS and pp.instance_area == 16
    cfg.MODEL.COPS.POST_PROCESSOR = "NoSuchPostProcessor"
    with pytest.raises(KeyError):
        build_post_processor(cfg)
    cfg = tiny_cfg(synth_dataset)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        build_post_processor(cfg)
    # More channels than the dataset has classes: the head would predict classes the evaluators
    # do not know (that failed only at evaluation).
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES + 1
    with pytest.raises(ValueError, match=rf"0..{NUM_CLASSES - 1} \({NUM_CLASSES} classes\).*set it to {NUM_CLASSES}"):
        build_post_processor(cfg)


# ----------------------------------------------------------------------------- model
def test_pretrain_step_and_inference(synth_dataset):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(synth_dataset))
    model.train()
    # 61x93 is not a multiple of the stride (4) nor of the backbone's 32
    batch = [synthetic_input(64, 96, 0), synthetic_input(61, 93, 1)]
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg"} | {f"loss_affinity_d{d}" for d in DISTANCES}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert _grad_norm(model.backbone.stem.conv1.weight) > 0
    assert _grad_norm(model.sem_seg_head.predictor.weight) > 0
    for clf in model.affinity_head.classifiers:
        assert _grad_norm(clf["predictor"].weight) > 0
    # the calibration is not trained in the pretraining stage
    assert all(_grad_norm(p) == 0 for p in model.calibration.parameters())

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"], "height": 2 * b["height"], "width": b["width"]} for b in batch])
    for b, out in zip(batch, outputs):
        pan, info = out["panoptic_seg"]
        assert tuple(pan.shape) == (2 * b["height"], b["width"])
        assert tuple(out["sem_seg"].shape) == (NUM_CLASSES, 2 * b["height"], b["width"])
        _check_panoptic(pan, info, THING_IDS)
        assert out["instances"].image_size == tuple(pan.shape)


def test_fully_differentiable_step_reaches_heads_and_calibration(synth_dataset):
    torch.manual_seed(0)
    cfg = tiny_cfg(synth_dataset, fully_differentiable=True)
    model = build_model(cfg)
    # the authors' limits on the grid: STUFF_AREA / 4 / 4, INSTANCE_AREA / 4
    assert model.pq_surrogate.stuff_area == pytest.approx(64 / 16)
    assert model.pq_surrogate.instance_area == pytest.approx(16 / 4)
    assert model.pq_surrogate.ratio_eps == pytest.approx(0.1) and model.pq_surrogate.rule == "original"
    assert model.amwc_layer.min_thing_cluster_size == 3 and model.edge_dropout.p == pytest.approx(0.1)
    # MODEL.COPS.LOCAL_SEARCH / BACKWARD_WARM_START / BACKWARD_FLOAT32 reach the layer; the
    # defaults are the authors' solver and backward (no local search, cold float32 solves)
    layer = model.amwc_layer
    assert not layer.local_search and not layer.backward_warm_start and layer.backward_float32
    cfg_other = cfg.clone()
    cfg_other.MODEL.COPS.LOCAL_SEARCH = True
    cfg_other.MODEL.COPS.BACKWARD_WARM_START = True
    cfg_other.MODEL.COPS.BACKWARD_FLOAT32 = False
    other = build_model(cfg_other).amwc_layer
    assert other.local_search and other.backward_warm_start and not other.backward_float32
    # a model that predicts the large stuff class 2 everywhere (an overlap with the ground truth,
    # so the PQ surrogate has a gradient)
    with torch.no_grad():
        model.sem_seg_head.predictor.bias[2] = 0.5
    model.train()
    batch = [synthetic_input(64, 96, 0), synthetic_input(61, 93, 1)]
    with EventStorage() as storage:
        losses = model(batch)
    assert set(losses) == {"loss_pq"}
    assert torch.isfinite(losses["loss_pq"]) and 0 < float(losses["loss_pq"].detach()) <= cfg.MODEL.COPS.PQ_LOSS_WEIGHT
    losses["loss_pq"].backward()
    assert _grad_norm(model.sem_seg_head.predictor.weight) > 0
    assert _grad_norm(model.calibration.semantic_weight) > 0
    assert _grad_norm(model.calibration.edge_weight) + _grad_norm(model.calibration.edge_bias) > 0
    assert sum(_grad_norm(clf["predictor"].weight) for clf in model.affinity_head.classifiers) > 0
    assert _grad_norm(model.backbone.stem.conv1.weight) > 0  # FROZEN_PREFIXES is empty here
    stats = model.last_train_stats
    for key in ("train_pq", "train_pq_th", "train_pq_st", "train_pq_surrogate", "amwc_time"):
        assert key in stats and np.isfinite(stats[key])
    assert 0 <= stats["train_pq"] <= 100
    assert "calib_semantic_weight" in stats and "calib_edge_weight_0" in stats
    logged = storage.latest()
    assert "train_pq" in logged and "train_pq_surrogate" in logged and "loss_pq" not in logged
    assert "amwc_backward_time_prev" not in stats  # no backward has run before the first step
    # the second step logs the first step's backward (the N perturbed MWC solves)
    with EventStorage():
        model(batch)
    stats = model.last_train_stats
    assert 0 < stats["amwc_backward_solver_time_prev"] <= stats["amwc_backward_time_prev"]


@pytest.mark.parametrize("fully_differentiable", [False, True])
def test_batch_smaller_than_the_crop_is_padded_for_aspp_pooling(synth_dataset, fully_differentiable):
    """With absolute crops, ASPP pools over crop size / stride cells; a batch whose images are
    all smaller than the crop (scale augmentation below 1) used to stop training with
    "pool_kernel_size must be divisible by the shape of inputs". It is padded to the crop, in
    training and at inference."""
    cfg = tiny_cfg(synth_dataset, fully_differentiable=fully_differentiable)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (128, 192)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.min_input_size == (128, 192)
    model.train()
    batch = [synthetic_input(64, 96, 0), synthetic_input(61, 93, 1)]
    assert tuple(model.preprocess_image(batch).tensor.shape[-2:]) == (128, 192)
    with EventStorage():
        losses = model(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    # inference on a smaller image: padded, outputs at the image's size
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[1]["image"]}])
    assert tuple(out[0]["panoptic_seg"][0].shape) == (61, 93)
    assert tuple(out[0]["sem_seg"].shape[-2:]) == (61, 93)
    # without the minimum size the same batch fails in the ASPP pooling
    model.train()
    model.min_input_size = None
    with pytest.raises(ValueError, match="pool_kernel_size"):
        with EventStorage():
            model(batch)


@pytest.mark.parametrize("pad", [True, False])
def test_stage2_pads_missed_ground_truth_and_logs_to_event_storage(synth_dataset, pad, caplog):
    """With MODEL.COPS.PAD_UNMATCHED_GT the AMWC layer gets one empty mask per ground-truth
    segment the matching leaves unmatched (here: a model predicting stuff class 2 everywhere
    misses every thing); the surrogate PQ, train PQ and calibration scalars reach the
    EventStorage and the log."""
    import logging

    torch.manual_seed(0)
    cfg = tiny_cfg(synth_dataset, fully_differentiable=True)
    cfg.MODEL.COPS.PAD_UNMATCHED_GT = pad
    cfg.MODEL.COPS.LOG_PERIOD = 5
    model = build_model(cfg)
    with torch.no_grad():
        model.sem_seg_head.predictor.bias[2] = 5.0
    model.train()
    batch = [synthetic_input(64, 96, 0)]
    with caplog.at_level(logging.INFO, logger="detectron2_cops"), EventStorage(start_iter=10) as storage:
        losses = model(batch)
    # every ground-truth segment but the one of class 2 is missed (things and stuff class 3)
    n_missed = int(sum(int(c) != 2 for c in batch[0]["gt_classes"]))
    assert n_missed >= 3
    stats = model.last_train_stats
    assert stats["num_padded_gt"] == (n_missed if pad else 0)
    losses["loss_pq"].backward()
    assert torch.isfinite(model.sem_seg_head.predictor.weight.grad).all()
    logged = storage.latest()
    for key in ("train_pq_surrogate", "train_pq", "calib_semantic_weight", "calib_edge_bias_0", "num_padded_gt"):
        assert key in logged, key
    assert any("COPS stage 2 iter 10" in r.getMessage() and "train_pq_surrogate" in r.getMessage()
               for r in caplog.records)


def test_stage2_stops_with_a_clear_message_on_nan(synth_dataset):
    """Stage 2 never silently diverges: non-finite calibrated costs (which the AMWC layer
    refuses) stop it with FloatingPointError, naming the tensor and the iteration."""
    model = build_model(tiny_cfg(synth_dataset, fully_differentiable=True))
    model.train()
    with torch.no_grad():
        model.calibration.edge_bias[1] = float("nan")
    named = r"iteration 7: AMWC layer input edge_costs\[1\] \(edge distance 2\) contains NaN"
    with EventStorage(start_iter=7), pytest.raises(FloatingPointError, match=named):
        model([synthetic_input(64, 96, 0)])
    with torch.no_grad():
        model.calibration.edge_bias[1] = 0.0
        model.calibration.semantic_weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="semantic_costs contains NaN or inf"):
        model([synthetic_input(64, 96, 0)])


def test_stage2_crowd_pixels_weigh_as_the_authors(synth_dataset):
    """Crowd pixels (in no ground-truth segment) weigh MODEL.COPS.SURROGATE_CROWD_WEIGHT in the
    surrogate and the AMWC gradient (authors: 1), void pixels 0."""
    x = synthetic_input(64, 96, 0)
    crowd = torch.isin(x["panoptic_ids"], x["crowd_ids"])
    assert crowd.any() and (x["pixel_weights"][crowd] == 0).all()
    for weight in (1.0, 0.0, 0.5):
        cfg = tiny_cfg(synth_dataset, fully_differentiable=True)
        cfg.MODEL.COPS.SURROGATE_CROWD_WEIGHT = weight
        model = build_model(cfg)
        w = model._stage2_pixel_weights([x], tuple(x["pixel_weights"].shape))[0]
        assert (w[crowd] == weight).all()
        assert torch.equal(w[~crowd], x["pixel_weights"][~crowd])


def test_train_pq_is_exact_for_a_perfect_solution(synth_dataset):
    """The logged training PQ of a solution equal to the ground truth is 100."""
    model = build_model(tiny_cfg(synth_dataset, fully_differentiable=True))
    x = synthetic_input(64, 96, 0)
    gt = x["panoptic_ids"]
    from detectron2_cops.layers import AMWCOutput

    labels = torch.where(gt >= 0, gt // 1000, torch.full_like(gt, 4))
    # instance ids: one per distinct panoptic id (void -> its own cluster)
    _, inst = torch.unique(gt, return_inverse=True)
    sol = AMWCOutput(labels, inst, [], torch.zeros(0, *gt.shape), torch.zeros(0, dtype=torch.long), 0.0)
    surrogate = type("S", (), {"pq": torch.tensor(1.0)})()
    model._log_train_stats([x], [sol], surrogate, 0.0, model.amwc_layer.last_timing)
    assert model.last_train_stats["train_pq"] == pytest.approx(100.0)


def test_frozen_bn_and_prefixes(synth_dataset):
    cfg = tiny_cfg(synth_dataset, fully_differentiable=True)
    cfg.MODEL.COPS.FREEZE_BN = True
    cfg.MODEL.COPS.FROZEN_PREFIXES = ["backbone", "sem_seg_head.decoder", "affinity_head.decoder"]
    model = build_model(cfg)
    model.train()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    bn = model.backbone.stem.conv1.norm
    assert isinstance(bn, FrozenBatchNorm2d)
    before = bn.running_mean.clone()
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(("backbone.", "sem_seg_head.decoder.", "affinity_head.decoder."))), name
    assert model.calibration.semantic_weight.requires_grad
    with EventStorage():
        model([synthetic_input(64, 96, 0)])
    assert torch.equal(bn.running_mean, before)


def test_empty_ground_truth_and_grayscale_train_without_nan(synth_dataset):
    """An image without any ground-truth segment (all void) trains in both stages without NaN;
    a one-channel image is accepted (repeated to three channels)."""
    torch.manual_seed(0)
    for fully_differentiable in (False, True):
        model = build_model(tiny_cfg(synth_dataset, fully_differentiable=fully_differentiable))
        model.train()
        batch = [synthetic_input(64, 96, 0, empty=True), synthetic_input(64, 64, 1, channels=1)]
        with EventStorage():
            losses = model(batch)
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": synthetic_input(40, 52, 2, channels=1)["image"]}])
    assert tuple(out["panoptic_seg"][0].shape) == (40, 52)


@pytest.mark.parametrize("key,value,match", [
    ("MODEL.COPS.SIZE_DIVISIBILITY", -5, r"MODEL.COPS.SIZE_DIVISIBILITY must be >= -1"),
    ("MODEL.COPS.SURROGATE_STUFF_AREA_DIVISOR", 0.0, r"MODEL.COPS.SURROGATE_STUFF_AREA_DIVISOR must be > 0"),
    ("MODEL.COPS.SURROGATE_INSTANCE_AREA_DIVISOR", float("inf"), "SURROGATE_INSTANCE_AREA_DIVISOR must be finite"),
    ("MODEL.COPS.PQ_LOSS_WEIGHT", -1.0, "MODEL.COPS.PQ_LOSS_WEIGHT must be >= 0"),
    ("MODEL.COPS.SURROGATE_CROWD_WEIGHT", float("nan"), "MODEL.COPS.SURROGATE_CROWD_WEIGHT must be finite"),
    ("MODEL.COPS.LOG_PERIOD", 0, "MODEL.COPS.LOG_PERIOD must be >= 1"),
    ("MODEL.COPS.STUFF_AREA", -1, r"stuff_area \(MODEL.COPS.STUFF_AREA\) must be >= 0"),
    ("MODEL.COPS.NUM_THREADS", 2.0, r"num_threads \(MODEL.COPS.NUM_THREADS\) must be an integer"),
    ("MODEL.COPS.NUM_LAMBDA_SAMPLES", 0, r"MODEL.COPS.\{NUM_LAMBDA_SAMPLES, .*\}: num_samples must be >= 1"),
    ("MODEL.COPS.PIXEL_DROPOUT", 1.5, r"MODEL.COPS.PIXEL_DROPOUT: p must"),
    ("MODEL.COPS.FROZEN_PREFIXES", ["backbone", "sem_seg_head.no_such_module"], "'sem_seg_head.no_such_module' matches no"),
    ("MODEL.COPS.FROZEN_PREFIXES", [""], "FROZEN_PREFIXES entry '' matches no parameter"),
    ("MODEL.PIXEL_STD", [1.0, 0.0, 1.0], "PIXEL_STD values > 0"),
    ("MODEL.PIXEL_MEAN", [0.0, 0.0], "MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must hold one value per channel"),
    ("MODEL.AFFINITY_HEAD.COMMON_STRIDE", 8, "COMMON_STRIDE .* must be equal"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5.0, "MODEL.SEM_SEG_HEAD.NUM_CLASSES must be an integer, got 5.0"),
])
def test_model_config_values_are_checked(synth_dataset, key, value, match):
    """Config loading is where the values enter: a bad one fails when the model is built, with
    the key named (the stage-2 modules' own errors are prefixed with the keys they come from)."""
    cfg = tiny_cfg(synth_dataset, fully_differentiable=True)
    node, name = cfg, key
    while "." in name:
        head, name = name.split(".", 1)
        node = node[head]
    node[name] = value
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_model_bad_input(synth_dataset):
    """What a user passes to forward is checked there, one error per kind, naming the entry."""
    model = build_model(tiny_cfg(synth_dataset))
    model.eval()
    with pytest.raises(ValueError, match="non-empty list"):
        model([])
    image_error = r"batched_inputs\[0\]\['image'\] must be a non-empty \[C, H, W\] tensor with C = 3"
    for bad in (torch.zeros(2, 32, 32, dtype=torch.uint8), torch.zeros(3, 0, 32), torch.zeros(3, 32, 32, dtype=torch.bool),
                "image.png"):
        with pytest.raises(ValueError, match=image_error):
            model([{"image": bad}])
    with pytest.raises(ValueError, match=image_error + ".*got NoneType"):
        model([{"img": torch.zeros(3, 32, 32)}])
    with pytest.raises(ValueError, match=r"batched_inputs\[1\]\['image'\] contains NaN or inf"):
        model([{"image": torch.zeros(3, 32, 32)}, {"image": torch.full((3, 32, 32), float("nan"))}])
    # float64 (and int) images are read as float32
    for image in (torch.zeros(3, 32, 32, dtype=torch.float64), torch.zeros(3, 32, 32, dtype=torch.int16)):
        (out,) = model([{"image": image}])
        assert out["panoptic_seg"][0].shape == (32, 32)
    for bad, match in ((2.7, "an integer, got 2.7"), (None, "an integer, got None"), (True, "an integer, got True"),
                       (0, ">= 1, got 0")):
        with pytest.raises(ValueError, match=r"batched_inputs\[0\]\['height'\] must be " + match):
            model([{"image": torch.zeros(3, 32, 32), "height": bad, "width": 32}])
    model.train()
    with pytest.raises(ValueError, match=r"batched_inputs\[0\] lacks \['sem_seg'"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])
    x = synthetic_input(64, 96, 0)
    x["affinity_targets"] = x["affinity_targets"][:-1]
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]: affinity_targets / affinity_weights must hold one map"):
        model([x])


# ----------------------------------------------------------------------------- real image
def _check_panoptic(pan, segments_info, thing_ids):
    assert pan.dim() == 2 and pan.dtype == torch.int32
    ids_in_map = set(torch.unique(pan).tolist()) - {0}
    ids_in_info = [s["id"] for s in segments_info]
    assert len(ids_in_info) == len(set(ids_in_info))
    assert set(ids_in_info) == ids_in_map
    for s in segments_info:
        assert s["id"] >= 1
        assert s["area"] == int((pan == s["id"]).sum())
        assert s["isthing"] == (s["category_id"] in thing_ids)


def test_default_predictor_on_real_sample_image(sample_dataset):
    from detectron2.data.detection_utils import read_image

    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(SAMPLE_PRETRAIN))
    cfg.DATASETS.TRAIN = (sample_dataset,)
    cfg.DATASETS.TEST = (sample_dataset,)
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 160
    cfg.MODEL.COPS.STUFF_AREA = 0
    cfg.MODEL.COPS.INSTANCE_AREA = 0
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    predictor = DefaultPredictor(cfg)
    info = get_panoptic_metadata(sample_dataset)
    path = sorted((SAMPLE / "images").glob("*.jpg"))[0]
    image = read_image(str(path), format="BGR")
    out = predictor(image)
    pan, segments_info = out["panoptic_seg"]
    assert tuple(pan.shape) == image.shape[:2]
    assert len(segments_info) > 0
    _check_panoptic(pan, segments_info, info["thing_ids"])
    assert all(s["category_id"] in info["class_ids"] for s in segments_info)
    assert tuple(out["sem_seg"].shape) == (133,) + image.shape[:2]
    inst = out["instances"]
    things = [s for s in segments_info if s["isthing"]]
    assert len(inst) == len(things)
    for k, s in enumerate(things):
        assert torch.equal(inst.pred_masks[k], pan == s["id"])
        assert int(inst.pred_classes[k]) == s["category_id"]
    assert torch.isfinite(inst.scores).all()
