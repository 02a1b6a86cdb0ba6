"""Dataset registration for COPS: COCO-panoptic-format folders, and panoptic metadata access.

Detectron2's builtin panoptic datasets (``cityscapes_fine_panoptic_{train,val}``,
``coco_2017_{train,val}_panoptic``, ...) are used unchanged. This module adds

* :func:`register_coco_panoptic_folder`: registers any folder ``<root>/<name>/`` in the COCO
  panoptic format (``images/``, ``panoptic/`` with RGB-encoded id PNGs, ``panoptic.json`` and
  optionally ``panoptic_coco_categories.json``) through Detectron2's own
  :func:`detectron2.data.datasets.register_coco_panoptic`, with the metadata of Detectron2's
  standard COCO panoptic dataset (one contiguous id range over all categories, in category-file
  order; ``label_divisor=1000``, ``ignore_label=255``);
* :func:`register_all_coco_panoptic_folders`, called when :mod:`detectron2_cops.data` is
  imported: registers the bundled sample ``coco_panoptic_sample`` under
  ``$DETECTRON2_DATASETS`` (default ``datasets``, relative to the current directory: from the
  repository root, the bundled ``datasets/coco_panoptic_sample``);
* :func:`check_dataset_files`: before training or evaluation, checks that the files a registered
  dataset names are there, and otherwise says which folder it looked in;
* :func:`get_panoptic_metadata`: the metadata fields COPS reads, checked, with
  ``label_divisor`` defaulting to 1000 when a dataset does not set it;
* :func:`register_panoptic_instances_view`: a ``<name>_instances`` dataset with the thing
  segments of a panoptic dataset as instance annotations, for Detectron2's ``COCOEvaluator``.

Registration is lazy: the annotation json is read when the dataset is first used. A folder
that does not exist at registration time still registers; using it raises a
``FileNotFoundError`` naming the path.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from detectron2.utils.file_io import PathManager

from .panoptic_utils import rgb2id

__all__ = [
    "COCO_PANOPTIC_FOLDERS",
    "register_coco_panoptic_folder",
    "register_all_coco_panoptic_folders",
    "load_coco_panoptic_folder",
    "check_dataset_files",
    "cityscapes_gt_file",
    "dataset_paths",
    "require_registered",
    "read_json",
    "get_panoptic_metadata",
    "register_panoptic_instances_view",
    "load_panoptic_as_instances",
]

logger = logging.getLogger(__name__)

#: COCO-panoptic-format folders registered on import of ``detectron2_cops.data``.
COCO_PANOPTIC_FOLDERS = ("coco_panoptic_sample",)

#: name -> absolute folder of datasets registered by :func:`register_coco_panoptic_folder`.
_REGISTERED_FOLDERS: Dict[str, str] = {}
#: name -> panoptic dataset name of views registered by :func:`register_panoptic_instances_view`.
_INSTANCE_VIEWS: Dict[str, str] = {}

_DEFAULT_LABEL_DIVISOR = 1000
_DEFAULT_IGNORE_LABEL = 255


def _describe_root() -> str:
    """Where dataset folders are looked up, for error messages."""
    env = os.getenv("DETECTRON2_DATASETS")
    if env is not None:
        return f"DETECTRON2_DATASETS={env} ({os.path.abspath(env)})"
    return (
        "DETECTRON2_DATASETS is not set, so Detectron2's default root 'datasets' relative to "
        f"the current directory: {os.path.abspath('datasets')}"
    )


def read_json(path: str, what: str):
    """The parsed json at ``path`` (any ``PathManager`` path). Raises FileNotFoundError (from the
    open), or ValueError naming ``what`` (e.g. ``"panoptic_json"``) and the path if it is not
    valid json."""
    with PathManager.open(path, "r") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} '{path}' is not valid json: {e}") from e


def require_registered(dataset_name: str) -> None:
    """ValueError naming ``dataset_name`` (and registered names with its prefix) unless it is
    registered in Detectron2's ``DatasetCatalog``."""
    if dataset_name not in DatasetCatalog.list():
        prefix = str(dataset_name).split("_")[0]
        similar = [n for n in DatasetCatalog.list() if n.split("_")[0] == prefix]
        raise ValueError(
            f"dataset '{dataset_name}' is not registered"
            + (f"; registered datasets with the same prefix: {similar[:20]}" if similar else "")
        )


def _folder_paths(folder: str) -> Dict[str, str]:
    return {
        "image_root": os.path.join(folder, "images"),
        "panoptic_root": os.path.join(folder, "panoptic"),
        "panoptic_json": os.path.join(folder, "panoptic.json"),
        "categories_json": os.path.join(folder, "panoptic_coco_categories.json"),
    }


def _default_colors(n: int) -> List[List[int]]:
    from detectron2.utils.colormap import colormap

    palette = colormap(rgb=True, maximum=255).astype(int).tolist()
    return [palette[i % len(palette)] for i in range(n)]


def _read_categories(folder: str) -> Tuple[List[dict], str]:
    """Categories of a COCO panoptic folder and the file they come from (checked)."""
    paths = _folder_paths(folder)
    if PathManager.isfile(paths["categories_json"]):
        source = paths["categories_json"]
        categories = read_json(source, "category file")
    else:
        source = paths["panoptic_json"]
        categories = read_json(source, "panoptic annotation file").get("categories")
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"'{source}' must hold a non-empty list of categories")
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict) or not {"id", "name", "isthing"} <= set(cat):
            raise ValueError(
                f"'{source}': category {k} must be a dict with 'id', 'name' and 'isthing', got {cat!r}"
            )
    ids = [cat["id"] for cat in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"'{source}': duplicate category ids in {ids}")
    return categories, source


def _metadata_from_categories(categories: List[dict], source: str) -> dict:
    """Metadata in the layout of Detectron2's standard COCO panoptic dataset: contiguous id =
    position in the category list; ``thing_*`` and ``stuff_*`` both list all categories."""
    names = [c["name"] for c in categories]
    fallback = _default_colors(len(categories))
    colors = [list(c.get("color", fallback[i])) for i, c in enumerate(categories)]
    thing_map, stuff_map = {}, {}
    for i, c in enumerate(categories):
        (thing_map if int(c["isthing"]) == 1 else stuff_map)[int(c["id"])] = i
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": thing_map,
        "stuff_dataset_id_to_contiguous_id": stuff_map,
        "categories_file": source,
    }


def _ensure_folder_metadata(name: str) -> None:
    """Fill in the category metadata of a folder dataset registered while its folder was
    missing; raise ``FileNotFoundError`` naming the folder if it is still missing."""
    folder = _REGISTERED_FOLDERS.get(name)
    if folder is None:
        return
    meta = MetadataCatalog.get(name)
    if hasattr(meta, "thing_dataset_id_to_contiguous_id"):
        return
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"dataset '{name}' is registered from the folder '{folder}', which does not exist "
            f"(dataset root: {_describe_root()}). Run from the directory that holds "
            f"'datasets/{os.path.basename(folder)}' (the repository root for the bundled sample), "
            f"or set DETECTRON2_DATASETS to the directory that contains "
            f"'{os.path.basename(folder)}' before importing detectron2_cops, or call "
            "register_coco_panoptic_folder(name, root, overwrite=True)."
        )
    categories, source = _read_categories(folder)
    meta.set(**_metadata_from_categories(categories, source))


def load_coco_panoptic_folder(
    json_file: str, image_root: str, panoptic_root: str, metadata: dict
) -> List[dict]:
    """Load a COCO panoptic annotation file into Detectron2 dataset dicts.

    The same dict format as Detectron2's ``load_coco_panoptic_json`` (``file_name``,
    ``image_id``, ``pan_seg_file_name``, ``segments_info`` with contiguous ``category_id`` and
    ``isthing``), plus ``height``/``width`` from the json's ``images``. Unlike Detectron2's
    loader, the image file name is taken from ``images`` (not assumed to be ``.jpg``; an image
    id missing from ``images`` falls back to the PNG name with ``.jpg``), and errors are clear.
    The segments' ``id`` and ``iscrowd`` are checked where they are used, by
    :class:`~detectron2_cops.data.target_generator.COPSTargetGenerator`.

    Args:
        json_file: ``panoptic.json`` path.
        image_root, panoptic_root: folders of the images and of the panoptic PNGs.
        metadata: dict with ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id``.
    Returns:
        list of dataset dicts, one per annotation, in json order.
    Raises:
        FileNotFoundError: the json, or the first image or PNG (so a missing folder too), is
            missing (names the path).
        ValueError: naming the json file: no ``annotations`` list; an annotation that is not a
            dict with ``image_id``, ``file_name`` and a ``segments_info`` list of dicts with a
            ``category_id`` (names the annotation); a segment whose ``category_id`` is not a
            category of the dataset (names the image and the id).
    """
    data = read_json(json_file, "panoptic annotation file")
    thing_map = metadata["thing_dataset_id_to_contiguous_id"]
    stuff_map = metadata["stuff_dataset_id_to_contiguous_id"]
    images = {img["id"]: img for img in data.get("images", [])}
    annotations = data.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        raise ValueError(f"panoptic annotation file '{json_file}' has no 'annotations' list")
    ret = []
    for index, ann in enumerate(annotations):
        try:
            image_id, png, segments_info = ann["image_id"], ann["file_name"], ann["segments_info"]
            id_category = [(seg["id"], seg["category_id"]) for seg in segments_info]
            png = os.path.join(panoptic_root, png)  # TypeError unless a string
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"'{json_file}': annotations[{index}] must be a dict with 'image_id', "
                "'file_name' and a 'segments_info' list of dicts with 'id' and 'category_id' "
                f"({type(e).__name__}: {e}); got {ann!r}"[:600]
            ) from e
        unknown = [c for _, c in id_category if c not in thing_map and c not in stuff_map]
        if unknown:
            raise ValueError(
                f"'{json_file}': image {image_id} ({ann['file_name']}) has segments of unknown "
                f"category ids {unknown[:10]}; known category ids: "
                f"{sorted(list(thing_map) + list(stuff_map))[:20]}..."
            )
        info = images.get(image_id, {})
        record = {
            "file_name": os.path.join(
                image_root, info.get("file_name", os.path.splitext(ann["file_name"])[0] + ".jpg")
            ),
            "image_id": image_id,
            "pan_seg_file_name": png,
            "segments_info": [
                dict(seg, category_id=thing_map[cat], isthing=True)
                if cat in thing_map
                else dict(seg, category_id=stuff_map[cat], isthing=False)
                for seg, (_, cat) in zip(segments_info, id_category)
            ],
        }
        if "height" in info and "width" in info:
            record["height"], record["width"] = int(info["height"]), int(info["width"])
        ret.append(record)
    for key in ("file_name", "pan_seg_file_name"):
        if not PathManager.isfile(ret[0][key]):
            raise FileNotFoundError(f"'{ret[0][key]}' (listed in '{json_file}') does not exist")
    return ret


def register_coco_panoptic_folder(
    name: str, root: Optional[str] = None, *, overwrite: bool = False, _defer_errors: bool = False
) -> None:
    """Register the COCO-panoptic-format folder ``<root>/<name>/`` as dataset ``name``.

    The folder holds ``images/``, ``panoptic/`` (RGB-encoded id PNGs), ``panoptic.json`` and
    optionally ``panoptic_coco_categories.json`` (else the categories of ``panoptic.json`` are
    used). Registration goes through Detectron2's ``register_coco_panoptic`` (metadata keys
    ``panoptic_root``, ``image_root``, ``panoptic_json``, ``evaluator_type="coco_panoptic_seg"``,
    ``ignore_label=255``, ``label_divisor=1000``, plus ``thing_classes``/``stuff_classes``,
    colors and the two ``*_dataset_id_to_contiguous_id`` maps over one contiguous range of all
    categories); the dataset loader is then replaced by :func:`load_coco_panoptic_folder` (which
    reads image names from the json and reports unknown categories clearly).

    Args:
        name: dataset name and folder name.
        root: parent directory (default: ``$DETECTRON2_DATASETS`` or ``datasets``); stored as an
            absolute path.
        overwrite: replace an existing registration of ``name``.
    Raises:
        ValueError: ``name`` is already registered (by something else, or from another folder)
            and ``overwrite`` is False; or the category file is malformed.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if root is None:
        root = os.getenv("DETECTRON2_DATASETS", "datasets")  # Detectron2's dataset root
    folder = os.path.abspath(os.path.join(root, name))
    if name in DatasetCatalog.list():
        if not overwrite:
            if _REGISTERED_FOLDERS.get(name) == folder:
                return  # idempotent
            raise ValueError(
                f"dataset '{name}' is already registered"
                + (f" from '{_REGISTERED_FOLDERS[name]}'" if name in _REGISTERED_FOLDERS else "")
                + f"; pass overwrite=True to register it from '{folder}'"
            )
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        _REGISTERED_FOLDERS.pop(name, None)
    paths = _folder_paths(folder)
    metadata = {}
    if os.path.isdir(folder):
        try:
            metadata = _metadata_from_categories(*_read_categories(folder))
        except (OSError, ValueError):
            if not _defer_errors:
                raise
            # registered without categories: the error is raised again when the dataset is used
            logger.warning(
                f"dataset '{name}': could not read the categories in '{folder}'", exc_info=True
            )
    register_coco_panoptic(
        name, metadata, paths["image_root"], paths["panoptic_root"], paths["panoptic_json"]
    )
    MetadataCatalog.get(name).set(dataset_folder=folder)
    _REGISTERED_FOLDERS[name] = folder

    def _load(name=name, paths=paths):
        _ensure_folder_metadata(name)
        meta = MetadataCatalog.get(name).as_dict()
        return load_coco_panoptic_folder(
            paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], meta
        )

    # Detectron2's loader assumes ".jpg" images and raises a bare KeyError on unknown
    # categories; keep its metadata, use ours for the dicts.
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, _load)


def register_all_coco_panoptic_folders(root: Optional[str] = None) -> List[str]:
    """Register every folder of :data:`COCO_PANOPTIC_FOLDERS` under ``root`` (default
    ``$DETECTRON2_DATASETS`` or ``datasets``), skipping names already registered.

    Returns:
        the names registered by this call.
    Raises:
        nothing for a missing or malformed folder: the error is raised when the dataset is used.
    """
    done = []
    for name in COCO_PANOPTIC_FOLDERS:
        if name in DatasetCatalog.list():
            continue
        # at import time, a broken folder must not break the import: errors surface on use
        register_coco_panoptic_folder(name, root, _defer_errors=True)
        done.append(name)
    return done


def get_panoptic_metadata(dataset_name: str) -> dict:
    """The metadata fields of a panoptic dataset that COPS reads, checked.

    Returns:
        dict with ``metadata`` (Detectron2 ``Metadata``), ``thing_dataset_id_to_contiguous_id``,
        ``stuff_dataset_id_to_contiguous_id`` (dataset id -> contiguous id), ``thing_ids`` and
        ``class_ids`` (sorted lists of contiguous ids: things, all classes), ``label_divisor``
        (default 1000 when the metadata has none) and ``ignore_label`` (default 255).
    Raises:
        FileNotFoundError: a folder dataset whose folder does not exist (names it).
        ValueError: ``dataset_name`` is not registered; its metadata lacks the two id maps, or
            their contiguous ids overlap, include ``ignore_label`` or reach ``label_divisor``.
    """
    require_registered(dataset_name)
    _ensure_folder_metadata(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "thing_dataset_id_to_contiguous_id") or not hasattr(
        meta, "stuff_dataset_id_to_contiguous_id"
    ):
        raise ValueError(
            f"dataset '{dataset_name}' is not a panoptic dataset: its metadata lacks "
            "thing_dataset_id_to_contiguous_id / stuff_dataset_id_to_contiguous_id"
        )
    thing_map = dict(meta.thing_dataset_id_to_contiguous_id)
    stuff_map = dict(meta.stuff_dataset_id_to_contiguous_id)
    thing_ids = sorted(set(thing_map.values()))
    stuff_ids = sorted(set(stuff_map.values()))
    ignore_label = int(meta.get("ignore_label", _DEFAULT_IGNORE_LABEL))
    label_divisor = int(meta.get("label_divisor", _DEFAULT_LABEL_DIVISOR))
    class_ids = sorted(thing_ids + stuff_ids)
    if (
        set(thing_ids) & set(stuff_ids)
        or ignore_label in class_ids
        or (class_ids and class_ids[-1] >= label_divisor)
    ):
        raise ValueError(
            f"dataset '{dataset_name}': the contiguous class ids of things {thing_ids} and stuff "
            f"{stuff_ids} must be disjoint, differ from ignore_label {ignore_label} and be "
            f"below label_divisor {label_divisor}"
        )
    return {
        "metadata": meta,
        "thing_dataset_id_to_contiguous_id": thing_map,
        "stuff_dataset_id_to_contiguous_id": stuff_map,
        "thing_ids": thing_ids,
        "class_ids": class_ids,
        "label_divisor": label_divisor,
        "ignore_label": ignore_label,
    }


#: Metadata keys of Detectron2's builtin and our datasets that name files or folders.
PATH_METADATA_KEYS = ("dataset_folder", "image_root", "panoptic_root", "panoptic_json", "gt_dir", "sem_seg_root")


def dataset_paths(metadata) -> Dict[str, str]:
    """The local paths (not URLs) that ``metadata`` (a Detectron2 ``Metadata``) names under
    :data:`PATH_METADATA_KEYS`, by key."""
    paths = {key: metadata.get(key, None) for key in PATH_METADATA_KEYS}
    return {k: p for k, p in paths.items() if isinstance(p, str) and p and "://" not in p}


def cityscapes_gt_file(gt_dir: str, image_file: str, suffix="_gtFine_instanceIds.png") -> str:
    """The Cityscapes ground truth ``<gt_dir>/<city>/<city>_<seq>_<frame><suffix>`` of the image
    ``.../<city>_<seq>_<frame>_leftImg8bit.png``."""
    stem = os.path.basename(image_file)
    if stem.endswith("_leftImg8bit.png"):
        stem = stem[: -len("_leftImg8bit.png")]
    else:
        stem = os.path.splitext(stem)[0]
    return os.path.join(gt_dir, stem.split("_")[0], stem + suffix)


def check_dataset_files(dataset_name: str) -> None:
    """Check that the files and folders a registered dataset names in its metadata (under
    :data:`PATH_METADATA_KEYS`; those that are set and local) exist. Used by
    ``tools/train_net.py`` before any process starts, so that a dataset that is not there is
    reported with the folder it was looked for in, not by an assertion deep in a loader.

    Works for Detectron2's builtin datasets (``cityscapes_fine_panoptic_*``,
    ``coco_2017_*_panoptic``, ...), whose paths are fixed under ``$DETECTRON2_DATASETS`` when
    Detectron2 is imported, and for :func:`register_coco_panoptic_folder` datasets. The files
    inside the folders are checked when the dataset is loaded.

    Raises:
        ValueError: ``dataset_name`` is not registered (lists similar registered names).
        FileNotFoundError: a named path is missing; the message lists every missing path and
            the dataset root in effect (``$DETECTRON2_DATASETS`` or ``./datasets``).
    """
    require_registered(dataset_name)
    paths = dataset_paths(MetadataCatalog.get(dataset_name))
    missing = [f"{k} '{os.path.abspath(p)}'" for k, p in paths.items() if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"dataset '{dataset_name}' is not there: {', '.join(missing)} does not exist. "
            f"Dataset root: {_describe_root()}. Put the dataset there (Detectron2's layout, see "
            "detectron2/datasets/README.md; COCO-panoptic folders: images/, panoptic/, "
            "panoptic.json), or set DETECTRON2_DATASETS to the directory that holds it."
        )


# ---------------------------------------------------------------------------- instances view
def load_panoptic_as_instances(panoptic_name: str) -> List[dict]:
    """Dataset dicts of ``panoptic_name`` with its thing segments as instance annotations.

    Each dict keeps ``file_name``, ``image_id``, ``height``, ``width`` and gets
    ``annotations``: one per thing segment (crowd included, with ``iscrowd``) with
    ``segmentation`` (COCO RLE of the mask read from the panoptic PNG), ``bbox`` (XYWH of the
    mask, ``bbox_mode=BoxMode.XYWH_ABS``) and the contiguous ``category_id``. Segments with no
    pixel in the PNG are skipped.

    Raises:
        FileNotFoundError: a panoptic PNG is missing (names it).
    """
    import pycocotools.mask as mask_util
    from detectron2.structures import BoxMode

    info = get_panoptic_metadata(panoptic_name)
    thing_ids = set(info["thing_ids"])
    out = []
    for record in DatasetCatalog.get(panoptic_name):
        with PathManager.open(record["pan_seg_file_name"], "rb") as f:
            rgb = np.asarray(Image.open(f).convert("RGB"))
        ids = rgb2id(rgb)
        annotations = []
        for seg in record["segments_info"]:
            if seg["category_id"] not in thing_ids:
                continue
            mask = ids == seg["id"]
            if not mask.any():
                continue
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "bbox": [float(x) for x in mask_util.toBbox(rle)],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "segmentation": rle,
                    "category_id": int(seg["category_id"]),
                    "iscrowd": int(seg.get("iscrowd", 0)),
                }
            )
        out.append(
            {
                "file_name": record["file_name"],
                "image_id": record["image_id"],
                "height": int(ids.shape[0]),
                "width": int(ids.shape[1]),
                "annotations": annotations,
            }
        )
    return out


def register_panoptic_instances_view(panoptic_name: str, name: Optional[str] = None) -> str:
    """Register ``name`` (default ``<panoptic_name>_instances``): the thing segments of a
    panoptic dataset as an instance segmentation dataset (:func:`load_panoptic_as_instances`),
    so that Detectron2's ``COCOEvaluator`` can score predicted ``instances`` on datasets that
    have no COCO instances json. Its metadata has ``thing_classes``/``thing_colors`` of the
    thing classes only and the panoptic dataset's ``thing_dataset_id_to_contiguous_id``, so
    predicted ``pred_classes`` (panoptic contiguous ids) are used unchanged.

    Returns:
        the registered name (an existing view of the same dataset is reused).
    Raises:
        ValueError: the thing classes are not the contiguous ids ``0 .. T-1`` (COCOEvaluator
            requires it; Detectron2's COCO panoptic metadata lists things first), or ``name`` is
            already registered as something else.
    """
    name = name or f"{panoptic_name}_instances"
    if name in DatasetCatalog.list():
        if _INSTANCE_VIEWS.get(name) == panoptic_name:
            return name
        raise ValueError(
            f"dataset '{name}' is already registered and is not an instances view of '{panoptic_name}'"
        )
    info = get_panoptic_metadata(panoptic_name)
    thing_ids = info["thing_ids"]
    if thing_ids != list(range(len(thing_ids))):
        raise ValueError(
            f"dataset '{panoptic_name}': COCO instance evaluation needs the thing classes to be the "
            f"contiguous ids 0..{len(thing_ids) - 1}, got {thing_ids[:10]}..."
        )
    meta = info["metadata"]
    names = list(meta.thing_classes)
    colors = list(meta.get("thing_colors", _default_colors(len(names))))
    DatasetCatalog.register(name, lambda: load_panoptic_as_instances(panoptic_name))
    MetadataCatalog.get(name).set(
        thing_classes=names[: len(thing_ids)],
        thing_colors=colors[: len(thing_ids)],
        thing_dataset_id_to_contiguous_id=copy.deepcopy(info["thing_dataset_id_to_contiguous_id"]),
        image_root=meta.get("image_root", ""),
        evaluator_type="coco",
        panoptic_dataset=panoptic_name,
    )
    _INSTANCE_VIEWS[name] = panoptic_name
    return name
