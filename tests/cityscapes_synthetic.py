"""Write a tiny synthetic dataset in the official Cityscapes layout (for the Cityscapes tests).

``write_cityscapes(root, {"train": 3, "val": 2})`` writes, under ``<root>/cityscapes``:

* ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` (RGB; each class has its
  own colour plus noise, so that a network can learn something);
* ``gtFine/<split>/<city>/..._gtFine_labelIds.png`` (uint8 Cityscapes label ids),
  ``..._gtFine_instanceIds.png`` (16-bit: ``label_id * 1000 + k`` for thing instances, the
  label id for stuff and for crowd regions) and ``..._gtFine_labelTrainIds.png`` (train ids,
  255 = ignore), as cityscapesscripts' ``json2labelImg`` / ``createTrainIdLabelImgs`` write them;
* ``gtFine/cityscapes_panoptic_<split>.json`` and ``gtFine/cityscapes_panoptic_<split>/``,
  written by cityscapesscripts' own ``createPanopticImgs.convert2panoptic`` (label ids, as
  Detectron2's builtin ``cityscapes_fine_panoptic_*`` expect).

Each frame: sky, building, vegetation, road and sidewalk (stuff), a pole, two to four cars and
one or two persons (thing instances), a crowd of persons (``iscrowd``), and an unlabeled
(void, label 0) strip at the bottom like the ego vehicle. Deterministic for a given seed.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Dict, Tuple

import numpy as np
from PIL import Image

# Cityscapes label ids (cityscapesscripts.helpers.labels)
UNLABELED, ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY = 0, 7, 8, 11, 17, 21, 23
PERSON, CAR = 24, 26
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau"), "test": ("berlin",)}


def _frame(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """``[H, W] int32`` Cityscapes instance ids of one synthetic frame."""
    ids = np.full((H, W), SKY, np.int32)
    horizon = int(H * rng.uniform(0.35, 0.45))
    ground = int(H * rng.uniform(0.55, 0.62))
    ids[horizon // 2 : ground, :] = BUILDING
    split = int(W * rng.uniform(0.6, 0.8))
    ids[horizon // 2 : ground, split:] = VEGETATION
    ids[ground:, :] = ROAD
    ids[ground : ground + max(2, H // 16), :] = SIDEWALK
    px = int(rng.integers(W // 8, W - W // 8))
    ids[horizon // 3 : ground + H // 16, px : px + max(2, W // 64)] = POLE
    k = 1
    for _ in range(int(rng.integers(2, 5))):  # cars
        h, w = int(rng.integers(H // 10, H // 5)), int(rng.integers(W // 10, W // 5))
        y = int(rng.integers(ground - h // 2, H - H // 8 - h))
        x = int(rng.integers(0, W - w))
        ids[y : y + h, x : x + w] = CAR * 1000 + k
        k += 1
    for _ in range(int(rng.integers(1, 3))):  # persons
        h, w = int(rng.integers(H // 6, H // 3)), int(rng.integers(W // 40 + 2, W // 16 + 3))
        y = int(rng.integers(max(0, ground - h), H - H // 8 - h))
        x = int(rng.integers(0, W - w))
        ids[y : y + h, x : x + w] = PERSON * 1000 + k
        k += 1
    # a crowd of persons (instance id = label id: iscrowd in the panoptic conversion)
    cw = max(4, W // 12)
    cx = int(rng.integers(0, W - cw))
    ids[ground - H // 8 : ground, cx : cx + cw] = PERSON
    ids[H - H // 10 :, :] = UNLABELED  # ego vehicle / void
    return ids


def _image(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    from cityscapesscripts.helpers.labels import id2label

    label = np.where(ids >= 1000, ids // 1000, ids)
    img = np.zeros(ids.shape + (3,), np.float32)
    for lid in np.unique(label):
        img[label == lid] = id2label[int(lid)].color
    # instances a bit brighter or darker, so that their borders are visible
    for iid in np.unique(ids[ids >= 1000]):
        img[ids == iid] *= rng.uniform(0.7, 1.1)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_cityscapes(
    root: str, splits: Dict[str, int], size: Tuple[int, int] = (128, 256), seed: int = 0
) -> str:
    """Write ``splits`` (split -> number of frames) at ``size = (H, W)`` under
    ``<root>/cityscapes``; returns that folder."""
    from cityscapesscripts.helpers.labels import id2label
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    H, W = size
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "cityscapes")
    to_train = np.full(256, 255, np.uint8)
    for lid, lab in id2label.items():
        if 0 <= lid < 256 and 0 <= lab.trainId < 255:
            to_train[lid] = lab.trainId
    for split, n in splits.items():
        cities = CITIES.get(split, ("city",))
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_000019"
            img_dir = os.path.join(base, "leftImg8bit", split, city)
            gt_dir = os.path.join(base, "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            ids = _frame(rng, H, W)
            label = np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8)
            Image.fromarray(_image(rng, ids)).save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
            Image.fromarray(ids.astype(np.uint16)).save(
                os.path.join(gt_dir, f"{stem}_gtFine_instanceIds.png")
            )
            Image.fromarray(label).save(os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"))
            Image.fromarray(to_train[label]).save(
                os.path.join(gt_dir, f"{stem}_gtFine_labelTrainIds.png")
            )
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(
            os.path.join(base, "gtFine"), os.path.join(base, "gtFine"), False, list(splits)
        )
    return base


def register_cityscapes_panoptic(root: str, suffix: str) -> Dict[str, str]:
    """Register ``cityscapes_fine_panoptic_{train,val}<suffix>`` against ``<root>`` with
    Detectron2's own builtin loader and metadata (``register_all_cityscapes_panoptic``
    registers the builtin names, which are already taken at import time by
    ``$DETECTRON2_DATASETS``; this registers the same thing under new names).

    Returns:
        ``{"train": name, "val": name}``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import cityscapes_panoptic as cp

    names = {key.rsplit("_", 1)[1]: key + suffix for key in cp._RAW_CITYSCAPES_PANOPTIC_SPLITS}
    # Detectron2's register function registers the fixed builtin names: set the builtin
    # entries aside, register, move the new entries to the new names, put the builtin back.
    builtin = {}
    for key in cp._RAW_CITYSCAPES_PANOPTIC_SPLITS:
        if key in DatasetCatalog.list():
            builtin[key] = (DatasetCatalog[key], MetadataCatalog.get(key))
            DatasetCatalog.remove(key)
            MetadataCatalog.remove(key)
    try:
        cp.register_all_cityscapes_panoptic(root)
        for key in cp._RAW_CITYSCAPES_PANOPTIC_SPLITS:
            new = names[key.rsplit("_", 1)[1]]
            func, meta = DatasetCatalog[key], MetadataCatalog.get(key).as_dict()
            meta.pop("name", None)
            DatasetCatalog.remove(key)
            MetadataCatalog.remove(key)
            if new in DatasetCatalog.list():
                DatasetCatalog.remove(new)
                MetadataCatalog.remove(new)
            DatasetCatalog.register(new, func)
            MetadataCatalog.get(new).set(**meta)
    finally:
        for key, (func, meta) in builtin.items():
            if key in DatasetCatalog.list():
                DatasetCatalog.remove(key)
                MetadataCatalog.remove(key)
            DatasetCatalog.register(key, func)
            MetadataCatalog[key] = meta
    return names
