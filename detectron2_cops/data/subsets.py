"""Evaluation subsets of panoptic datasets (e.g. a slice of ``cityscapes_fine_panoptic_val``).

The panoptic and Cityscapes instance evaluators score *every* ground-truth image of a dataset
(``panoptic_json`` for PQ, every ``*_gtFine_instanceIds.png`` under ``gt_dir`` for AP), so a
dataset restricted by filtering its dicts alone cannot be evaluated. :func:`register_panoptic_subset`
registers a subset as a dataset of its own, with its own ground-truth files:

* ``<folder>/panoptic.json``: the base ``panoptic_json`` with only the chosen ``annotations``
  (and ``images``); ``panoptic_root`` stays the base one (PNGs are looked up by file name);
* for Cityscapes datasets (metadata ``gt_dir``): ``<folder>/gt/<city>/`` with symbolic links
  to the chosen frames' ``*_gtFine_instanceIds.png`` (and ``_labelIds``), so that
  :class:`~detectron2_cops.evaluation.CityscapesInstanceEvaluator` sees only those frames.

The subset's metadata is the base's with ``panoptic_json`` / ``gt_dir`` replaced and
``subset_of`` added; its dicts are the base's dicts of the chosen images, in the base order.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

__all__ = ["register_panoptic_subset", "evenly_spaced"]


def evenly_spaced(total: int, count: int) -> List[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them if ``count >= total``):
    ``floor(i * total / count)`` for ``i < count``. Deterministic, and on the name-sorted
    Cityscapes lists it mixes the cities.

    Raises:
        ValueError: ``count < 1`` or ``total < 0``.
    """
    if int(count) != count or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total!r}")
    if count >= total:
        return list(range(total))
    return [(i * total) // count for i in range(count)]


def register_panoptic_subset(
    base_name: str,
    name: str,
    indices: Sequence[int],
    folder: str,
) -> str:
    """Register ``name``: the images ``indices`` (positions in ``DatasetCatalog.get(base_name)``)
    of the panoptic dataset ``base_name``, with ground-truth files written under ``folder``
    (see the module docstring). Re-registering the same ``name`` replaces it.

    Args:
        base_name: a registered panoptic dataset with ``panoptic_json`` in its metadata.
        name: the new dataset's name.
        indices: distinct positions into the base dataset's dicts.
        folder: where the subset's json (and Cityscapes ``gt`` links) are written; an existing
            ``<folder>/gt`` (of an earlier subset) is replaced.
    Returns:
        ``name``.
    Raises:
        ValueError: ``base_name`` unregistered or without ``panoptic_json``; empty, repeated or
            out-of-range ``indices``; a chosen image missing from the base json.
        FileNotFoundError: a Cityscapes ``*_gtFine_instanceIds.png`` of a chosen frame is missing.
    """
    if base_name not in DatasetCatalog.list():
        raise ValueError(f"dataset '{base_name}' is not registered")
    meta = MetadataCatalog.get(base_name)
    if not meta.get("panoptic_json"):
        raise ValueError(f"dataset '{base_name}' has no 'panoptic_json' in its metadata")
    records = DatasetCatalog.get(base_name)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("indices must not be empty")
    if len(set(indices)) != len(indices):
        raise ValueError("indices must be distinct")
    bad = [i for i in indices if not 0 <= i < len(records)]
    if bad:
        raise ValueError(f"indices {bad[:10]} out of range for {len(records)} images of '{base_name}'")
    chosen = [records[i] for i in sorted(indices)]

    with PathManager.open(meta.panoptic_json, "r") as f:
        gt = json.load(f)
    png_names = {os.path.basename(r["pan_seg_file_name"]) for r in chosen}
    annotations = [a for a in gt["annotations"] if a["file_name"] in png_names]
    if len(annotations) != len(png_names):
        found = {a["file_name"] for a in annotations}
        raise ValueError(
            f"'{meta.panoptic_json}' has no annotation for {sorted(png_names - found)[:5]}"
        )
    ann_ids = {a["image_id"] for a in annotations}
    gt["annotations"] = annotations
    if "images" in gt:
        gt["images"] = [im for im in gt["images"] if im.get("id") in ann_ids]
    os.makedirs(folder, exist_ok=True)
    json_path = os.path.join(folder, "panoptic.json")
    with open(json_path, "w") as f:
        json.dump(gt, f)

    extra = {}
    if meta.get("gt_dir"):  # Cityscapes: instance AP reads every frame under gt_dir
        gt_dir = os.path.join(folder, "gt")
        if os.path.isdir(gt_dir):  # links of an earlier subset written to the same folder
            shutil.rmtree(gt_dir)
        for r in chosen:
            stem = os.path.basename(r["file_name"])
            if stem.endswith("_leftImg8bit.png"):
                stem = stem[: -len("_leftImg8bit.png")]
            else:
                stem = os.path.splitext(stem)[0]
            city = stem.split("_")[0]
            os.makedirs(os.path.join(gt_dir, city), exist_ok=True)
            for suffix in ("_gtFine_instanceIds.png", "_gtFine_labelIds.png"):
                src = os.path.join(meta.gt_dir, city, stem + suffix)
                if not os.path.isfile(src):
                    if suffix == "_gtFine_instanceIds.png":
                        raise FileNotFoundError(f"Cityscapes ground truth '{src}' does not exist")
                    continue
                dst = os.path.join(gt_dir, city, stem + suffix)
                if os.path.lexists(dst):
                    os.remove(dst)
                os.symlink(os.path.abspath(src), dst)
        extra["gt_dir"] = gt_dir

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    keep = {os.path.basename(r["pan_seg_file_name"]) for r in chosen}

    def _load(base_name=base_name, keep=keep):
        return [
            r
            for r in DatasetCatalog.get(base_name)
            if os.path.basename(r["pan_seg_file_name"]) in keep
        ]

    DatasetCatalog.register(name, _load)
    base_meta = {k: v for k, v in meta.as_dict().items() if k != "name"}
    base_meta.update(panoptic_json=json_path, subset_of=base_name, **extra)
    MetadataCatalog.get(name).set(**base_meta)
    return name
