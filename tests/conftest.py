"""Fixtures and helpers shared by the test modules (pytest loads this file first).

Tests that need Detectron2 skip with the reason printed when it is not installed; everything
under ``detectron2_cops.solvers`` and ``detectron2_cops.layers`` is tested without it.
"""
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
# The bundled sample; COPS_TEST_DATASETS names another root that holds coco_panoptic_sample/.
SAMPLE = (
    pathlib.Path(os.environ.get("COPS_TEST_DATASETS", REPO / "datasets")) / "coco_panoptic_sample"
)

# --- data: copies of the bundled sample (test_data*, test_evaluation) ---
import json  # noqa: E402
import shutil  # noqa: E402
from uuid import uuid4  # noqa: E402

import pytest  # noqa: E402


def unique_name(prefix: str = "cops_test") -> str:
    """A dataset name no other test registers."""
    return f"{prefix}_{uuid4().hex[:8]}"


def need_sample() -> None:
    """Fail (not skip) when the bundled sample is missing."""
    if not (SAMPLE / "panoptic.json").is_file():
        pytest.fail(f"the bundled COCO panoptic sample is missing at {SAMPLE} (datasets/"
                    "coco_panoptic_sample in the repository; COPS_TEST_DATASETS overrides its root)")


def copy_sample(folder: pathlib.Path, edit=None) -> pathlib.Path:
    """A writable copy of the sample at ``folder``; ``edit(folder, json_data)`` may change the
    files and the json before the copy's panoptic.json is written."""
    need_sample()
    shutil.copytree(SAMPLE, folder)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    data = json.loads((folder / "panoptic.json").read_text())
    if edit is not None:
        edit(folder, data)
    (folder / "panoptic.json").write_text(json.dumps(data))
    return folder


def snapshot(root: pathlib.Path) -> dict:
    """Every path under ``root``: its bytes (files), link target (links) or None (folders)."""
    out = {}
    for p in root.rglob("*"):  # links to folders are not followed
        if p.is_symlink():
            out[str(p.relative_to(root))] = ("link", os.readlink(p))
        else:
            out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory) -> str:
    """The bundled sample registered under a unique name (through a link to its folder)."""
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    need_sample()
    from detectron2_cops.data.datasets import register_coco_panoptic_folder

    name = unique_name("cops_sample")
    root = tmp_path_factory.mktemp("root")
    os.symlink(SAMPLE, root / name)
    register_coco_panoptic_folder(name, str(root))
    return name


@pytest.fixture
def register_sample_copy(tmp_path):
    """``register(edit=None) -> (name, folder)``: a fresh copy of the sample under ``tmp_path``
    (see :func:`copy_sample`), registered with ``register_coco_panoptic_folder``."""
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    from detectron2_cops.data.datasets import register_coco_panoptic_folder

    def register(edit=None, prefix="cops_copy"):
        name = unique_name(prefix)
        folder = copy_sample(tmp_path / name, edit)
        register_coco_panoptic_folder(name, str(tmp_path))
        return name, folder

    return register


# --- modeling: a tiny config and synthetic dataset (test_meta_arch, test_optimizer) ---
import uuid  # noqa: E402

import pytest  # noqa: E402

# Synthetic dataset: contiguous classes 0, 1 are things, 2, 3, 4 stuff.
NUM_CLASSES = 5
THING_IDS = [0, 1]
DISTANCES = [1, 2, 4]
INTERVALS = [1, 1, 2]


@pytest.fixture(scope="module")
def synth_dataset():
    """A registered panoptic dataset name with the synthetic class layout (no images needed)."""
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = f"cops_test_synth_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        thing_dataset_id_to_contiguous_id={10: 0, 11: 1},
        stuff_dataset_id_to_contiguous_id={20: 2, 21: 3, 22: 4},
        thing_classes=["a", "b", "c", "d", "e"],
        stuff_classes=["a", "b", "c", "d", "e"],
        label_divisor=1000,
        ignore_label=255,
    )
    return name


def tiny_cfg(dataset: str, fully_differentiable: bool = False):
    """A COPS config of a CPU-sized model (ResNet-18, 16-channel decoders) for ``dataset``."""
    from detectron2.config import get_cfg

    from detectron2_cops.config import add_cops_config

    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "COPS"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.RES5_DILATION = 1
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res5"]
    for head in (cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.AFFINITY_HEAD):
        head.IN_FEATURES = ["res2", "res3", "res5"]
        head.PROJECT_FEATURES = ["res2", "res3"]
        head.PROJECT_CHANNELS = [8, 8]
        head.ASPP_CHANNELS = 16
        head.ASPP_DILATIONS = [1, 2, 3]
        head.ASPP_DROPOUT = 0.0
        head.CONVS_DIM = 16
        head.HEAD_CHANNELS = 16
        head.NORM = "BN"
        head.COMMON_STRIDE = 4
        head.USE_DEPTHWISE_SEPARABLE_CONV = False
    cfg.MODEL.SEM_SEG_HEAD.NAME = "COPSSemSegHead"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TOP_K = 0.5
    cfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES = DISTANCES
    cfg.MODEL.AFFINITY_HEAD.EDGE_SAMPLING_INTERVALS = INTERVALS
    cfg.MODEL.COPS.STUFF_AREA = 64
    cfg.MODEL.COPS.INSTANCE_AREA = 16
    cfg.MODEL.COPS.NUM_LAMBDA_SAMPLES = 2
    cfg.MODEL.COPS.FULLY_DIFFERENTIABLE = fully_differentiable
    if fully_differentiable:
        cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 0.0
        cfg.MODEL.AFFINITY_HEAD.LOSS_WEIGHT = 0.0
        cfg.MODEL.COPS.PIXEL_DROPOUT = 0.1
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = (dataset,)
    return cfg


# --- layers: panoptic id maps as masks (test_amwc_layer, test_pq_surrogate) ---
LD = 1000  # label divisor of the layers' tests: id = class * LD + instance


def masks_from_ids(id_map, void_id=-1, dtype=None):
    """``[H, W]`` panoptic id map -> (``[N, H, W]`` masks of ``dtype`` (default float32), ``[N]``
    int64 classes ``id // LD``, the ``N`` ids in ascending order), void left out."""
    import numpy as np
    import torch

    ids = [i for i in np.unique(id_map).tolist() if i != void_id]
    m = torch.from_numpy(np.stack([id_map == i for i in ids]) if ids else np.zeros((0,) + id_map.shape, bool))
    return m.to(dtype or torch.float32), torch.tensor([i // LD for i in ids], dtype=torch.long), ids
