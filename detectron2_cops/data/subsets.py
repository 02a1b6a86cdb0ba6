"""Evaluation subsets of panoptic datasets (e.g. a slice of ``cityscapes_fine_panoptic_val``).

The panoptic and Cityscapes instance evaluators score *every* ground-truth image of a dataset
(``panoptic_json`` for PQ, every ``*_gtFine_instanceIds.png`` under ``gt_dir`` for AP), so a
dataset restricted by filtering its dicts alone cannot be evaluated. :func:`register_panoptic_subset`
registers a subset as a dataset of its own, with its own ground-truth files:

* ``<folder>/panoptic.json``: the base ``panoptic_json`` with only the chosen ``annotations``
  (and ``images``); ``panoptic_root`` stays the base one (PNGs are looked up by file name);
* for Cityscapes datasets (metadata ``gt_dir``): ``<folder>/gt/<city>/`` with symbolic links
  to the chosen frames' ``*_gtFine_instanceIds.png`` (and ``_labelIds``), so that
  :class:`~detectron2_cops.evaluation.CityscapesInstanceEvaluator` sees only those frames, and
  the marker file ``<folder>/gt/.cops_panoptic_subset`` that identifies the folder as this
  module's output (only a marked ``gt`` folder is ever deleted, to be rewritten).

Nothing is written before every argument has been checked; a ``folder`` that is, contains or
lies inside the base dataset's image, panoptic or ground-truth folders or its json is refused,
so the base dataset's files are never touched.

The subset's metadata is the base's with ``panoptic_json`` / ``gt_dir`` replaced and
``subset_of`` added; its dicts are the base's dicts of the chosen images, in the base order.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from detectron2_cops.checks import as_int, as_int_list

from .datasets import cityscapes_gt_file, dataset_paths, read_json, require_registered

__all__ = ["register_panoptic_subset", "evenly_spaced"]

#: Name of the file that marks ``<folder>/gt`` as written by :func:`register_panoptic_subset`.
GT_MARKER = ".cops_panoptic_subset"

#: name -> (base_name, sorted indices, real path of folder) of the subsets registered here.
_SUBSETS: Dict[str, Tuple[str, Tuple[int, ...], str]] = {}


def evenly_spaced(total: int, count: int) -> List[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them if ``count >= total``):
    ``floor(i * total / count)`` for ``i < count``. Deterministic, and on the name-sorted
    Cityscapes lists it mixes the cities.

    Raises:
        ValueError: ``count`` not an integer >= 1 or ``total`` not an integer >= 0.
    """
    count, total = as_int(count, "count", minimum=1), as_int(total, "total", minimum=0)
    if count >= total:
        return list(range(total))
    return [(i * total) // count for i in range(count)]


def _overlaps(a: str, b: str) -> bool:
    """Real paths ``a`` and ``b`` are equal or one lies inside the other."""
    a_dir, b_dir = a.rstrip(os.sep) + os.sep, b.rstrip(os.sep) + os.sep
    return a == b or a.startswith(b_dir) or b.startswith(a_dir)


def _check_folder(folder, base_name: str, name: str, meta) -> Tuple[str, str, str]:
    """``(folder, json_path, gt_dir)`` if ``folder`` may receive the subset's files, else
    ValueError."""
    if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder):
        raise ValueError(f"folder must be a non-empty path, got {folder!r}")
    folder = os.fspath(folder)
    json_path = os.path.join(folder, "panoptic.json")
    gt_dir = os.path.join(folder, "gt")
    targets = [(p, os.path.realpath(p)) for p in (folder, json_path, gt_dir)]
    for key, path in dataset_paths(meta).items():
        real = os.path.realpath(path)
        for target, real_target in targets:
            if _overlaps(real_target, real):
                what = f"folder '{folder}'" if target == folder else f"'{target}'"
                raise ValueError(
                    f"{what} of subset '{name}' is, contains or lies inside {key} '{path}' of "
                    f"the base dataset '{base_name}' (real paths '{real_target}', '{real}'); "
                    "writing there could overwrite the base dataset's files. Give a separate "
                    "folder"
                )
    # the json of another registered dataset (e.g. another subset written to this folder)
    for other in MetadataCatalog.list():
        other_json = dataset_paths(MetadataCatalog.get(other)).get("panoptic_json")
        if other != name and other_json and os.path.realpath(other_json) == targets[1][1]:
            raise ValueError(
                f"folder '{folder}' of subset '{name}' holds '{other_json}', the panoptic json "
                f"of the registered dataset '{other}'; give another folder"
            )
    return folder, json_path, gt_dir


def _check_gt_dir(gt_dir: str, name: str) -> bool:
    """Whether ``gt_dir`` exists (then it must be a marked folder of an earlier subset)."""
    if not os.path.lexists(gt_dir):
        return False
    if os.path.islink(gt_dir) or not os.path.isfile(os.path.join(gt_dir, GT_MARKER)):
        raise ValueError(
            f"'{gt_dir}' (the Cityscapes ground-truth folder of subset '{name}') already exists "
            f"and is not a folder written by register_panoptic_subset (a link, a file, or a "
            f"folder without the '{GT_MARKER}' marker); it is not deleted: remove it yourself or "
            "give another folder"
        )
    return True


def register_panoptic_subset(
    base_name: str,
    name: str,
    indices: Sequence[int],
    folder: str,
) -> str:
    """Register ``name``: the images ``indices`` (positions in ``DatasetCatalog.get(base_name)``)
    of the panoptic dataset ``base_name``, with ground-truth files written under ``folder``
    (see the module docstring). Re-registering a ``name`` registered by this function replaces
    it. Every check below happens before anything is written to disk.

    Args:
        base_name: a registered panoptic dataset with ``panoptic_json`` in its metadata.
        name: the new dataset's name: not ``base_name``, and not a dataset registered by
            anything else than this function.
        indices: distinct integer positions (``int`` or NumPy integers; not bools or floats)
            into the base dataset's dicts.
        folder: where the subset's json (and Cityscapes ``gt`` links) are written; it must not
            be, contain or lie inside the base dataset's ``dataset_folder``, ``image_root``,
            ``panoptic_root``, ``panoptic_json``, ``gt_dir`` or ``sem_seg_root`` (real paths,
            links resolved), nor hold another registered dataset's ``panoptic_json``. An
            existing ``<folder>/gt`` is replaced only if it holds the marker file written by
            this function (an earlier subset's links); ``<folder>/panoptic.json`` is replaced.
    Returns:
        ``name``.
    Raises:
        ValueError: ``base_name`` unregistered or without ``panoptic_json``; ``name`` empty,
            equal to ``base_name``, registered by something else, or the base of another
            subset registered here (unless the call repeats that subset's registration
            exactly); empty, non-integer, repeated or out-of-range ``indices``; a ``folder``
            as described above or an existing ``<folder>/gt`` without the marker (it is not
            deleted); a chosen image missing from the base json.
        FileNotFoundError: a Cityscapes ``*_gtFine_instanceIds.png`` of a chosen frame is missing.
        OSError: ``folder`` or ``<folder>/panoptic.json`` exists and cannot be written (e.g. a
            file in place of the folder); nothing is written then.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    require_registered(base_name)
    if name == base_name:
        raise ValueError(
            f"the subset name '{name}' is the base dataset's name; registering it would replace "
            "the base dataset"
        )
    meta = MetadataCatalog.get(base_name)
    if not meta.get("panoptic_json"):
        raise ValueError(f"dataset '{base_name}' has no 'panoptic_json' in its metadata")
    records = DatasetCatalog.get(base_name)
    indices = as_int_list(indices, "indices", minimum=0)
    if not indices or len(set(indices)) != len(indices) or max(indices) >= len(records):
        raise ValueError(
            f"indices must be distinct positions in [0, {len(records)}) of the images of "
            f"'{base_name}', at least one; got {indices[:20]}"
        )
    folder, json_path, gt_dir = _check_folder(folder, base_name, name, meta)

    spec = (base_name, tuple(sorted(indices)), os.path.realpath(folder))
    registered = DatasetCatalog.list()
    if name in registered:
        if name not in _SUBSETS or MetadataCatalog.get(name).get("subset_of") != _SUBSETS[name][0]:
            raise ValueError(
                f"dataset '{name}' is already registered (not as a subset by "
                "register_panoptic_subset); choose another name"
            )
        users = sorted(n for n, s in _SUBSETS.items() if s[0] == name and n in registered)
        if users and _SUBSETS[name] != spec:
            raise ValueError(
                f"subset '{name}' is the base dataset of the subsets {users}; it cannot be "
                "replaced by a different subset"
            )
    chosen = [records[i] for i in sorted(indices)]

    gt = read_json(meta.panoptic_json, "panoptic_json")
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

    links = []  # Cityscapes ground-truth files of the chosen frames
    replace_gt = False
    if meta.get("gt_dir"):  # Cityscapes: instance AP reads every frame under gt_dir
        for r in chosen:
            src = cityscapes_gt_file(meta.gt_dir, r["file_name"])
            if not os.path.isfile(src):
                raise FileNotFoundError(f"Cityscapes ground truth '{src}' does not exist")
            labels = cityscapes_gt_file(meta.gt_dir, r["file_name"], "_gtFine_labelIds.png")
            links += [src] + ([labels] if os.path.isfile(labels) else [])
        replace_gt = _check_gt_dir(gt_dir, name)

    # ---- every check passed: write
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".panoptic.", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(gt, f)
        os.replace(tmp, json_path)  # replaces a link at json_path, never its target
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise

    extra = {}
    if meta.get("gt_dir"):
        if replace_gt:  # links of an earlier subset written to the same folder (marked)
            shutil.rmtree(gt_dir)
        os.makedirs(gt_dir)
        with open(os.path.join(gt_dir, GT_MARKER), "w") as f:
            f.write(f"written by register_panoptic_subset('{base_name}', '{name}')\n")
        for src in links:  # <gt_dir>/<city>/<file name>
            city_dir = os.path.join(gt_dir, os.path.basename(os.path.dirname(src)))
            os.makedirs(city_dir, exist_ok=True)
            os.symlink(os.path.abspath(src), os.path.join(city_dir, os.path.basename(src)))
        extra["gt_dir"] = gt_dir

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def _load(base_name=base_name, keep=png_names):
        records = DatasetCatalog.get(base_name)
        return [r for r in records if os.path.basename(r["pan_seg_file_name"]) in keep]

    DatasetCatalog.register(name, _load)
    base_meta = {k: v for k, v in meta.as_dict().items() if k != "name"}
    base_meta.update(panoptic_json=json_path, subset_of=base_name, **extra)
    MetadataCatalog.get(name).set(**base_meta)
    _SUBSETS[name] = spec
    return name
