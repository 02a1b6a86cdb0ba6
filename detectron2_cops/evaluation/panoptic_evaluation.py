"""Panoptic quality (PQ) evaluation without panopticapi.

:class:`PanopticEvaluator` is a drop-in replacement for Detectron2's ``COCOPanopticEvaluator``
(same constructor, prediction files and result keys) that scores with the PQ implementation
shipped in ``cityscapesscripts`` (``cityscapesscripts.evaluation.evalPanopticSemanticLabeling``,
a port of panopticapi's ``pq_compute`` for the COCO panoptic format) instead of panopticapi.

PQ, SQ, RQ (Kirillov et al., "Panoptic Segmentation", CVPR 2019, Eq. 1-2): per category,
predicted and ground-truth segments match when their IoU > 0.5 (void and, for false positives,
same-class crowd regions are ignored), ``PQ = sum_TP IoU / (|TP| + |FP|/2 + |FN|/2)``,
``SQ = sum_TP IoU / |TP|``, ``RQ = |TP| / (|TP| + |FP|/2 + |FN|/2)``; averaged over the categories
that occur in the ground truth or the predictions, for all, thing and stuff categories.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import numbers
import os
import re
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from tabulate import tabulate

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from detectron2_cops.data.datasets import get_panoptic_metadata
from detectron2_cops.data.panoptic_utils import MAX_PANOPTIC_ID, id2rgb

__all__ = ["PanopticEvaluator", "pq_compute", "print_panoptic_results"]

logger = logging.getLogger(__name__)

_PQ_GROUPS = (("All", None), ("Things", True), ("Stuff", False))


def _pq_chunk(args):
    """Worker: cityscapesscripts' single-core PQ statistics over a list of image pairs."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import pq_compute_single_core

    proc_id, pairs, gt_folder, pred_folder, categories = args
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute_single_core(proc_id, pairs, gt_folder, pred_folder, categories)


def _check_known_images(gt_ids, pred_ids, pred_what: str, gt_what: str) -> None:
    """Raise when predictions name images that are not in the ground truth."""
    known = set(gt_ids)
    unknown = [i for i in pred_ids if i not in known]
    if unknown:
        raise ValueError(
            f"{pred_what}: {len(unknown)} predictions are for images not in the ground truth "
            f"{gt_what}, e.g. image ids {unknown[:10]}"
        )


def png_size(path: str) -> Tuple[int, int]:
    """``(height, width)`` of the image file at ``path`` (any ``PathManager`` path), read from
    its header (the evaluators compare predictions with ground-truth PNGs by it)."""
    with PathManager.open(path, "rb") as f, Image.open(f) as img:
        return img.size[1], img.size[0]


def _check_pair(gt_ann, pred_ann, gt_json_file, gt_folder, pred_folder, categories) -> None:
    """Validate one (ground truth, prediction) pair before cityscapesscripts sees it; fill in
    the ground truth's missing ``area`` (pixel counts of the PNG) and ``iscrowd`` (0)."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import rgb2id as cs_rgb2id

    image = f"image {gt_ann['image_id']!r}"
    where = f"'{gt_json_file}', {image} ('{gt_ann['file_name']}')"
    for k, seg in enumerate(gt_ann["segments_info"]):
        if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
            raise ValueError(
                f"{where}: ground-truth segments_info[{k}] must be a dict with 'id' and "
                f"'category_id', got {seg!r}"[:500]
            )
    gt_size = png_size(os.path.join(gt_folder, gt_ann["file_name"]))
    pred_size = png_size(os.path.join(pred_folder, pred_ann["file_name"]))
    if pred_size != gt_size:
        raise ValueError(
            f"{image}: the prediction '{os.path.join(pred_folder, pred_ann['file_name'])}' has "
            f"size (height, width) {pred_size}, the ground truth "
            f"'{os.path.join(gt_folder, gt_ann['file_name'])}' {gt_size}"
        )
    ids = [s.get("id") for s in pred_ann["segments_info"]]
    repeated = [i for i, n in collections.Counter(ids).items() if n > 1]
    if repeated:
        raise ValueError(
            f"prediction of {image}: segment ids {repeated[:10]} appear more than once"
        )
    for seg in pred_ann["segments_info"]:
        if seg.get("category_id") not in categories:
            raise ValueError(
                f"prediction of {image}: segment {seg.get('id')} has category_id "
                f"{seg.get('category_id')!r}, not a category id of the ground truth "
                f"(e.g. {sorted(categories)[:10]})"
            )
    if any("area" not in s for s in gt_ann["segments_info"]):
        with Image.open(os.path.join(gt_folder, gt_ann["file_name"])) as img:
            pan_gt = cs_rgb2id(np.array(img, dtype=np.uint32))
        labels, counts = np.unique(pan_gt, return_counts=True)
        area = dict(zip(labels.tolist(), counts.tolist()))
        missing = [s["id"] for s in gt_ann["segments_info"] if "area" not in s]
        logger.info(f"{where}: computing 'area' of segments {missing[:10]} from the PNG")
        for s in gt_ann["segments_info"]:
            if "area" not in s:
                s["area"] = int(area.get(s["id"], 0))
    for s in gt_ann["segments_info"]:
        s.setdefault("iscrowd", 0)


def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: str,
    pred_folder: str,
    *,
    categories: Optional[List[dict]] = None,
    num_processes: int = 1,
) -> Dict[str, dict]:
    """PQ/SQ/RQ of predictions in the COCO panoptic format, with cityscapesscripts.

    Uses ``pq_compute_single_core`` and ``PQStat`` of
    ``cityscapesscripts.evaluation.evalPanopticSemanticLabeling`` (the same statistics as
    panopticapi's ``pq_compute``), on one process by default (no pool start-up cost).

    Args:
        gt_json_file, pred_json_file: COCO panoptic json files (``annotations`` with
            ``image_id``, ``file_name``, ``segments_info``); predictions are matched by
            ``image_id`` and must cover every ground-truth image.
        gt_folder, pred_folder: folders of the RGB-encoded PNGs named by ``file_name``.
        categories: the dataset categories (``id``, ``name``, ``isthing``); default: the
            ``categories`` of the ground-truth json.
        num_processes: > 1 splits the images over a ``multiprocessing`` pool of that size.
    Returns:
        ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq" (fractions in [0, 1]), "n" (number of
        categories averaged)}, "per_class": {category_id: {"pq", "sq", "rq"}}}``; a group with no
        category (``n == 0``) has NaN scores.
    Ground-truth segments without ``area`` get it computed from the ground-truth PNG (the pixel
    count of their id, which is all cityscapesscripts uses it for); without ``iscrowd`` they
    count as not crowd (``iscrowd=0``, as the dataset loaders read them).

    Raises:
        ValueError: no categories; ground-truth images without a prediction, predictions for
            images not in the ground truth, or an image predicted twice (names the image ids);
            a ground-truth segment without ``id``/``category_id``; a prediction with duplicate
            segment ids or a ``category_id`` not in ``categories``; a prediction PNG whose size
            differs from the ground-truth PNG (names the image and both files and sizes).
        FileNotFoundError: a ground-truth or prediction PNG is missing.
        KeyError: inconsistent prediction files (raised by cityscapesscripts: a segment id in a
            PNG missing from the json or vice versa).
    """
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import PQStat

    with PathManager.open(gt_json_file, "r") as f:
        gt_json = json.load(f)
    with PathManager.open(pred_json_file, "r") as f:
        pred_json = json.load(f)
    if categories is None:
        categories = gt_json.get("categories")
    if not categories:
        raise ValueError(f"no categories: '{gt_json_file}' has none and none were given")
    categories = {c["id"]: c for c in categories}
    pred_counts = collections.Counter(a["image_id"] for a in pred_json["annotations"])
    repeated = [i for i, n in pred_counts.items() if n > 1]
    if repeated:
        raise ValueError(
            f"'{pred_json_file}' has more than one prediction for image ids {repeated[:10]}"
        )
    pred_by_image = {a["image_id"]: a for a in pred_json["annotations"]}
    missing = [a["image_id"] for a in gt_json["annotations"] if a["image_id"] not in pred_by_image]
    if missing:
        raise ValueError(
            f"{len(missing)} ground-truth images of '{gt_json_file}' have no prediction in "
            f"'{pred_json_file}', e.g. image ids {missing[:10]}"
        )
    _check_known_images(
        [a["image_id"] for a in gt_json["annotations"]],
        [a["image_id"] for a in pred_json["annotations"]],
        f"'{pred_json_file}'",
        f"'{gt_json_file}'",
    )
    pairs = [(a, pred_by_image[a["image_id"]]) for a in gt_json["annotations"]]
    for gt_ann, pred_ann in pairs:
        _check_pair(gt_ann, pred_ann, gt_json_file, gt_folder, pred_folder, categories)

    num_processes = max(1, min(int(num_processes), len(pairs)))
    chunks = [pairs[i::num_processes] for i in range(num_processes)]
    jobs = [(i, c, gt_folder, pred_folder, categories) for i, c in enumerate(chunks)]
    if num_processes == 1:
        stats = [_pq_chunk(jobs[0])]
    else:
        with multiprocessing.Pool(num_processes) as pool:
            stats = pool.map(_pq_chunk, jobs)
    pq_stat = PQStat()
    for s in stats:
        pq_stat += s

    results: Dict[str, dict] = {}
    for name, isthing in _PQ_GROUPS:
        try:
            results[name], per_class = pq_stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:  # no category of this group in ground truth or predictions
            results[name] = {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}
            per_class = {}
        if name == "All":
            results["per_class"] = per_class
    return results


def print_panoptic_results(pq_res: Dict[str, dict]) -> str:
    """Log (and return) the table Detectron2's ``COCOPanopticEvaluator`` prints."""
    headers = ["", "PQ", "SQ", "RQ", "#categories"]
    data = []
    for name, _ in _PQ_GROUPS:
        row = [name] + [pq_res[name][k] * 100 for k in ["pq", "sq", "rq"]] + [pq_res[name]["n"]]
        data.append(row)
    table = tabulate(
        data, headers=headers, tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center"
    )
    logger.info("Panoptic Evaluation Results:\n" + table)
    return table


def _unique_png_names(predictions: List[dict]) -> List[dict]:
    """Rename the PNGs of images whose basenames coincide to ``<stem>_id<image_id>.png``."""
    counts = collections.Counter(p["file_name"] for p in predictions)
    if all(n == 1 for n in counts.values()):
        return predictions
    renamed = []
    for p in predictions:
        if counts[p["file_name"]] > 1:
            tag = re.sub(r"[^A-Za-z0-9_.-]", "_", str(p["image_id"]))
            p = dict(p, file_name=f"{os.path.splitext(p['file_name'])[0]}_id{tag}.png")
        renamed.append(p)
    clash = [n for n, c in collections.Counter(p["file_name"] for p in renamed).items() if c > 1]
    if clash:
        raise ValueError(
            f"prediction PNG names {clash[:10]} are not unique even with the image id appended; "
            "give the images distinct file names or image ids"
        )
    return renamed


class PanopticEvaluator(DatasetEvaluator):
    """Evaluate PQ/SQ/RQ like Detectron2's ``COCOPanopticEvaluator``, with cityscapesscripts.

    Works for every dataset with panoptic metadata (``panoptic_json``, ``panoptic_root``,
    ``thing_dataset_id_to_contiguous_id``, ``stuff_dataset_id_to_contiguous_id``,
    ``label_divisor`` (default 1000)): COCO panoptic, Cityscapes panoptic, COCO-panoptic
    folders. It contains a synchronisation and must be called from all workers; only the main
    process scores.

    ``process`` takes ``inputs[i]`` with ``file_name``, ``image_id`` and optionally ``height``,
    ``width``, and ``outputs[i]["panoptic_seg"] = (panoptic_img, segments_info)``:

    * ``panoptic_img`` non-empty ``[H, W]`` integer tensor (or array) at the input image's
      original size: ``(H, W) == (height, width)`` of the input when it has them, else the size
      of the ground-truth PNG (checked by ``evaluate``);
    * ``segments_info`` a list of dicts (``id``, ``category_id`` ints, optional ``isthing``:
      the contiguous id is mapped back to the dataset id when ``isthing`` is given, as in
      Detectron2), with id 0 = void: the ids are unique, in ``[1, 256**3 - 1]``, and exactly the
      non-zero values of ``panoptic_img``; or ``None``: then ``panoptic_img`` holds
      ``class * label_divisor + instance`` with -1 = void (Panoptic-DeepLab / COPS convention),
      and segments are derived from its unique values.

    ``evaluate`` writes ``predictions.json`` (the ground-truth json with the predicted
    ``annotations``) and the PNGs: into ``output_dir`` (PNGs under
    ``output_dir/predictions/``) when given, else into a temporary directory; then returns
    ``OrderedDict({"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st",
    "SQ_st", "RQ_st"}})`` in percent. PNGs are named after the basename of ``file_name`` (as
    Detectron2 does); images whose basenames coincide get ``_id<image_id>`` appended instead.
    Ground-truth segments without ``area`` get it from the ground-truth PNG (see
    :func:`pq_compute`).

    Args:
        dataset_name: a registered panoptic dataset.
        output_dir: where to save the predictions (optional).
        num_processes: processes of the PQ computation (keyword only; default 1).
    Raises:
        ValueError: (constructor) not a panoptic dataset or no ``panoptic_json``/``panoptic_root``;
            (``process``, naming the image) an input without ``file_name``/``image_id``, an
            output without a ``(panoptic_img, segments_info)`` pair under ``panoptic_seg``, a
            ``panoptic_img`` that is not a non-empty ``[H, W]`` integer map or not of the input's
            ``(height, width)``, ids outside the PNG range, classes unknown to the dataset, or
            a ``segments_info`` with non-dict entries, non-integer, duplicate or zero ids, or
            ids that are not exactly the non-zero values of ``panoptic_img``; (``evaluate``)
            see :meth:`evaluate`.
    """

    def __init__(
        self, dataset_name: str, output_dir: Optional[str] = None, *, num_processes: int = 1
    ):
        info = get_panoptic_metadata(dataset_name)
        self._dataset_name = dataset_name
        self._metadata = info["metadata"]
        for key in ("panoptic_json", "panoptic_root"):
            if not self._metadata.get(key):
                raise ValueError(f"dataset '{dataset_name}' has no '{key}' in its metadata")
        self._label_divisor = info["label_divisor"]
        self._thing_contiguous_id_to_dataset_id = {
            v: k for k, v in info["thing_dataset_id_to_contiguous_id"].items()
        }
        self._stuff_contiguous_id_to_dataset_id = {
            v: k for k, v in info["stuff_dataset_id_to_contiguous_id"].items()
        }
        self._output_dir = output_dir
        if self._output_dir is not None:
            PathManager.mkdirs(self._output_dir)
        self._num_processes = int(num_processes)
        self._predictions: List[dict] = []

    def reset(self):
        self._predictions = []

    def _convert_category_id(self, segment_info: dict, context: str) -> dict:
        segment_info = dict(segment_info)
        isthing = segment_info.pop("isthing", None)
        if isthing is None:
            # the model produces dataset category ids directly
            return segment_info
        table = (
            self._thing_contiguous_id_to_dataset_id
            if isthing
            else self._stuff_contiguous_id_to_dataset_id
        )
        cat = int(segment_info["category_id"])
        if cat not in table:
            raise ValueError(
                f"{context}: segment {segment_info.get('id')} has contiguous "
                f"{'thing' if isthing else 'stuff'} class {cat}, unknown to dataset "
                f"'{self._dataset_name}'"
            )
        segment_info["category_id"] = table[cat]
        return segment_info

    def _segments_from_label_divisor(self, panoptic_img: np.ndarray, context: str):
        if panoptic_img.size and panoptic_img.min() < -1:
            raise ValueError(
                f"{context}: panoptic_seg with segments_info=None must use -1 for void and "
                f"class * label_divisor + instance otherwise, got value {int(panoptic_img.min())}"
            )
        segments_info = []
        for label in np.unique(panoptic_img).tolist():
            if label == -1:
                continue
            pred_class = label // self._label_divisor
            if pred_class in self._thing_contiguous_id_to_dataset_id:
                isthing = True
            elif pred_class in self._stuff_contiguous_id_to_dataset_id:
                isthing = False
            else:
                raise ValueError(
                    f"{context}: panoptic id {label} has class {pred_class} (label_divisor "
                    f"{self._label_divisor}), unknown to dataset '{self._dataset_name}'"
                )
            # the official evaluation uses 0 for void: shift every id by one
            segments_info.append({"id": label + 1, "category_id": pred_class, "isthing": isthing})
        return panoptic_img + 1, segments_info

    @staticmethod
    def _check_segments_info(segments_info, panoptic_img: np.ndarray, context: str) -> list:
        """Validate a given ``segments_info`` against ``panoptic_img``; returns copies with
        ``id``/``category_id`` as Python ints."""
        if isinstance(segments_info, (str, bytes, dict)) or not hasattr(
            segments_info, "__iter__"
        ):
            raise ValueError(
                f"{context}: panoptic_seg[1] (segments_info) must be a list of dicts or None, "
                f"got {type(segments_info).__name__}"
            )
        checked = []
        for k, seg in enumerate(segments_info):
            if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
                raise ValueError(
                    f"{context}: segments_info[{k}] must be a dict with 'id' and 'category_id', "
                    f"got {seg!r}"[:500]
                )
            seg = dict(seg)
            for key in ("id", "category_id"):
                v = seg[key]
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise ValueError(
                        f"{context}: segments_info[{k}]['{key}'] must be an int, got {v!r} "
                        f"({type(v).__name__})"
                    )
                seg[key] = int(v)
            if not 1 <= seg["id"] <= MAX_PANOPTIC_ID:
                raise ValueError(
                    f"{context}: segments_info[{k}]['id'] must lie in [1, {MAX_PANOPTIC_ID}] "
                    f"(0 is void), got {seg['id']}"
                )
            checked.append(seg)
        ids = [s["id"] for s in checked]
        repeated = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(
                f"{context}: segments_info ids must be unique, ids {repeated[:10]} appear more "
                "than once"
            )
        in_img = set(np.unique(panoptic_img).tolist()) - {0}
        not_in_img = sorted(set(ids) - in_img)
        not_listed = sorted(in_img - set(ids))
        if not_in_img or not_listed:
            raise ValueError(
                f"{context}: segments_info ids must be the non-zero values of panoptic_seg[0]: "
                f"ids {not_in_img[:10]} are not in the map, map values {not_listed[:10]} are "
                "not in segments_info"
            )
        return checked

    def process(self, inputs, outputs):
        """Check and encode the ``panoptic_seg`` of each output (see the class docstring).

        Raises:
            ValueError: invalid input or output (see the class docstring); names the image.
        """
        for input, output in zip(inputs, outputs):
            context = f"image '{input.get('file_name', input.get('image_id'))}'"
            for key in ("file_name", "image_id"):
                if key not in input:
                    raise ValueError(f"{context}: the input has no '{key}' (keys: {sorted(input)})")
            pan = output.get("panoptic_seg") if isinstance(output, dict) else None
            if not isinstance(pan, (tuple, list)) or len(pan) != 2:
                raise ValueError(
                    f"{context}: outputs must hold 'panoptic_seg' = (panoptic_img, segments_info), "
                    f"got {type(pan).__name__}"
                )
            panoptic_img, segments_info = pan
            panoptic_img = np.asarray(
                panoptic_img.cpu().numpy() if hasattr(panoptic_img, "cpu") else panoptic_img
            )
            if panoptic_img.ndim != 2 or not np.issubdtype(panoptic_img.dtype, np.integer):
                raise ValueError(
                    f"{context}: panoptic_seg[0] must be an [H, W] integer tensor, got shape "
                    f"{list(panoptic_img.shape)} and dtype {panoptic_img.dtype}"
                )
            if panoptic_img.size == 0:
                raise ValueError(
                    f"{context}: panoptic_seg[0] is empty (shape {list(panoptic_img.shape)})"
                )
            if "height" in input and "width" in input:
                expected = (int(input["height"]), int(input["width"]))
                if panoptic_img.shape != expected:
                    raise ValueError(
                        f"{context}: panoptic_seg[0] has shape {list(panoptic_img.shape)}, "
                        f"expected the input's [height, width] = {list(expected)}"
                    )
            panoptic_img = panoptic_img.astype(np.int64)
            if segments_info is None:
                panoptic_img, segments_info = self._segments_from_label_divisor(
                    panoptic_img, context
                )
            else:
                segments_info = self._check_segments_info(segments_info, panoptic_img, context)
            if panoptic_img.size and (
                panoptic_img.min() < 0 or panoptic_img.max() > MAX_PANOPTIC_ID
            ):
                raise ValueError(
                    f"{context}: panoptic ids must lie in [0, {MAX_PANOPTIC_ID}] to be written as "
                    f"RGB, got [{int(panoptic_img.min())}, {int(panoptic_img.max())}]"
                )
            segments_info = [self._convert_category_id(s, context) for s in segments_info]
            file_name_png = os.path.splitext(os.path.basename(input["file_name"]))[0] + ".png"
            with io.BytesIO() as out:
                Image.fromarray(id2rgb(panoptic_img)).save(out, format="PNG")
                png_string = out.getvalue()
            self._predictions.append(
                {
                    "image_id": input["image_id"],
                    "file_name": file_name_png,
                    "png_string": png_string,
                    "segments_info": segments_info,
                }
            )

    def evaluate(self):
        """Gather the predictions of every process (``detectron2.utils.comm.gather`` to rank 0)
        and compute PQ on rank 0; other ranks return None.

        Raises:
            ValueError: (rank 0) an image predicted more than once over all processes (an
                inference sampler that does not split the images into disjoint shards, e.g. a
                training sampler, would count it twice); predictions for image ids that are not
                in the ground-truth json, or ground-truth images without a prediction (names
                the ids); a prediction whose size differs from its ground-truth PNG, or the
                other errors of :func:`pq_compute` (names the image).
        """
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None
        counts = collections.Counter(p["image_id"] for p in predictions)
        repeated = [i for i, n in counts.items() if n > 1]
        if repeated:
            raise ValueError(
                f"dataset '{self._dataset_name}': images {repeated[:10]} were predicted more than "
                f"once over {comm.get_world_size()} process(es); each image must be evaluated "
                "once (use Detectron2's InferenceSampler, as build_detection_test_loader does)"
            )
        logger.info(
            f"Panoptic evaluation of {len(predictions)} images gathered from "
            f"{comm.get_world_size()} process(es)"
        )

        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with open(gt_json, "r") as f:
            json_data = json.load(f)
        categories = json_data.get("categories")
        if not categories and self._metadata.get("categories_file"):
            with open(self._metadata.categories_file, "r") as f:
                categories = json.load(f)

        _check_known_images(
            [a["image_id"] for a in json_data.get("annotations", [])],
            [p["image_id"] for p in predictions],
            f"dataset '{self._dataset_name}'",
            f"'{gt_json}'",
        )
        predictions = _unique_png_names(predictions)

        with contextlib.ExitStack() as stack:
            if self._output_dir is not None:
                out_dir = self._output_dir
                pred_dir = os.path.join(out_dir, "predictions")
                PathManager.mkdirs(pred_dir)
            else:
                out_dir = pred_dir = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="panoptic_eval")
                )
            logger.info(f"Writing all panoptic predictions to {pred_dir} ...")
            annotations = []
            for p in predictions:
                p = dict(p)
                with PathManager.open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                    f.write(p.pop("png_string"))
                annotations.append(p)
            json_data["annotations"] = annotations
            predictions_json = os.path.join(out_dir, "predictions.json")
            with PathManager.open(predictions_json, "w") as f:
                f.write(json.dumps(json_data))

            pq_res = pq_compute(
                gt_json,
                PathManager.get_local_path(predictions_json),
                gt_folder=gt_folder,
                pred_folder=pred_dir,
                categories=categories,
                num_processes=self._num_processes,
            )

        res = {}
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for key in ("pq", "sq", "rq"):
                res[key.upper() + suffix] = 100.0 * float(pq_res[group][key])
        print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})
