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
import os
import re
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from tabulate import tabulate

from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from detectron2_cops.data.datasets import get_panoptic_metadata, read_json
from detectron2_cops.data.panoptic_utils import id2rgb, rgb2id

__all__ = ["PanopticEvaluator", "pq_compute", "print_panoptic_results"]

logger = logging.getLogger(__name__)


def print_panoptic_results(pq_res: Dict[str, Dict[str, float]]) -> None:
    """Logs the PQ/SQ/RQ table (in percent) of :func:`pq_compute`'s result: rows "All", "Things",
    "Stuff", each a dict with ``"pq"``, ``"sq"``, ``"rq"`` (fractions) and ``"n"`` (categories),
    laid out as Detectron2's ``COCOPanopticEvaluator`` logs it."""
    rows = [
        [name] + [pq_res[name][k] * 100 for k in ("pq", "sq", "rq")] + [pq_res[name]["n"]]
        for name in ("All", "Things", "Stuff")
    ]
    table = tabulate(
        rows,
        headers=["", "PQ", "SQ", "RQ", "#categories"],
        tablefmt="pipe",
        floatfmt=".3f",
        stralign="center",
        numalign="center",
    )
    logger.info("Panoptic Evaluation Results:\n" + table)


def _pq_chunk(args):
    """Worker: cityscapesscripts' single-core PQ statistics over a list of image pairs."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import pq_compute_single_core

    proc_id, pairs, gt_folder, pred_folder, categories = args
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute_single_core(proc_id, pairs, gt_folder, pred_folder, categories)


def png_size(path: str) -> Tuple[int, int]:
    """``(height, width)`` of the image file at ``path`` (any ``PathManager`` path), read from
    its header (the evaluators compare predictions with ground-truth PNGs by it)."""
    with PathManager.open(path, "rb") as f, Image.open(f) as img:
        return img.size[1], img.size[0]


def _pair_up(gt_annotations: List[dict], pred_annotations: List[dict], what: str):
    """``[(ground truth, prediction)]`` matched by ``image_id``, in ground-truth order.

    Raises:
        ValueError: naming ``what``: an image predicted more than once, a ground-truth image
            without a prediction or a prediction for an image not in the ground truth.
    """
    counts = collections.Counter(a["image_id"] for a in pred_annotations)
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(f"{what}: images {repeated[:10]} were predicted more than once")
    gt_ids = {a["image_id"] for a in gt_annotations}
    missing = [a["image_id"] for a in gt_annotations if a["image_id"] not in counts]
    unknown = [i for i in counts if i not in gt_ids]
    if missing or unknown:
        raise ValueError(
            f"{what}: {len(missing)} ground-truth images have no prediction (e.g. image ids "
            f"{missing[:10]}) and {len(unknown)} predictions are for images not in the ground "
            f"truth (e.g. image ids {unknown[:10]})"
        )
    by_image = {a["image_id"]: a for a in pred_annotations}
    return [(a, by_image[a["image_id"]]) for a in gt_annotations]


def _complete_ground_truth(gt_ann: dict, gt_folder: str) -> None:
    """Fill in the ``area`` (pixel count of the id in the PNG) and ``iscrowd`` (0) that
    cityscapesscripts reads and a ground-truth json may lack."""
    segments = gt_ann["segments_info"]
    if any("area" not in s for s in segments):
        with Image.open(os.path.join(gt_folder, gt_ann["file_name"])) as img:
            ids, counts = np.unique(rgb2id(np.asarray(img.convert("RGB"))), return_counts=True)
        area = dict(zip(ids.tolist(), counts.tolist()))
        for s in segments:
            s.setdefault("area", int(area.get(s["id"], 0)))
    for s in segments:
        s.setdefault("iscrowd", 0)


def _pq_average(pairs, gt_folder: str, pred_folder: str, categories, num_processes: int):
    """cityscapesscripts' PQ statistics of matched (ground truth, prediction) annotations."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import PQStat

    categories = {c["id"]: c for c in categories}
    for gt_ann, _ in pairs:
        _complete_ground_truth(gt_ann, gt_folder)
    n = max(1, min(int(num_processes), len(pairs)))
    jobs = [(i, pairs[i::n], gt_folder, pred_folder, categories) for i in range(n)]
    if n == 1:
        stats = [_pq_chunk(jobs[0])]
    else:
        with multiprocessing.Pool(n) as pool:
            stats = pool.map(_pq_chunk, jobs)
    pq_stat = PQStat()
    for s in stats:
        pq_stat += s

    results: Dict[str, dict] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            results[name], per_class = pq_stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:  # no category of this group in ground truth or predictions
            results[name] = {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}
            per_class = {}
        if name == "All":
            results["per_class"] = per_class
    return results


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
            a prediction with duplicate segment ids, or whose PNG size differs from the
            ground-truth PNG (names the image and both files and sizes).
        FileNotFoundError: a ground-truth or prediction PNG is missing.
        KeyError: from cityscapesscripts, naming the image and segment: a prediction segment
            whose ``category_id`` is not in ``categories``, a segment id in a PNG missing from
            the json or vice versa.
    """
    gt_json = read_json(gt_json_file, "ground-truth json")
    pred_json = read_json(pred_json_file, "prediction json")
    categories = categories or gt_json.get("categories")
    if not categories:
        raise ValueError(f"no categories: '{gt_json_file}' has none and none were given")
    pairs = _pair_up(gt_json["annotations"], pred_json["annotations"], f"'{pred_json_file}'")
    for gt_ann, pred_ann in pairs:
        gt_png = os.path.join(gt_folder, gt_ann["file_name"])
        pred_png = os.path.join(pred_folder, pred_ann["file_name"])
        gt_size, pred_size = png_size(gt_png), png_size(pred_png)
        if pred_size != gt_size:
            raise ValueError(
                f"image {gt_ann['image_id']!r}: the prediction '{pred_png}' has size (height, "
                f"width) {pred_size}, the ground truth '{gt_png}' {gt_size}"
            )
        ids = [s["id"] for s in pred_ann["segments_info"]]
        repeated = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(
                f"prediction of image {gt_ann['image_id']!r}: segment ids {repeated[:10]} appear "
                "more than once"
            )
    return _pq_average(pairs, gt_folder, pred_folder, categories, num_processes)


def _make_png_names_unique(annotations: List[dict]) -> None:
    """Rename (in place) the PNGs of images whose basenames coincide to
    ``<stem>_id<image_id>.png``."""
    counts = collections.Counter(a["file_name"] for a in annotations)
    for a in annotations:
        if counts[a["file_name"]] > 1:
            tag = re.sub(r"[^A-Za-z0-9_.-]", "_", str(a["image_id"]))
            a["file_name"] = f"{os.path.splitext(a['file_name'])[0]}_id{tag}.png"
    counts = collections.Counter(a["file_name"] for a in annotations)
    clash = [n for n, c in counts.items() if c > 1]
    if clash:
        raise ValueError(
            f"prediction PNG names {clash[:10]} are not unique even with the image id appended; "
            "give the images distinct file names or image ids"
        )


class PanopticEvaluator(COCOPanopticEvaluator):
    """Evaluate PQ/SQ/RQ like Detectron2's ``COCOPanopticEvaluator``, with cityscapesscripts.

    Detectron2's evaluator with its constructor, prediction files and result keys; PQ is
    computed with the implementation shipped in cityscapesscripts instead of panopticapi. Works
    for every dataset with panoptic metadata (``panoptic_json``, ``panoptic_root``,
    ``thing_dataset_id_to_contiguous_id``, ``stuff_dataset_id_to_contiguous_id``,
    ``label_divisor`` (default 1000)): COCO panoptic, Cityscapes panoptic, COCO-panoptic
    folders. It contains a synchronisation and must be called from all workers; only the main
    process scores.

    ``process`` takes ``inputs[i]`` with ``file_name`` and ``image_id`` (an image of the
    ground-truth json), and ``outputs[i]["panoptic_seg"] = (panoptic_img, segments_info)``:

    * ``panoptic_img`` an ``[H, W]`` integer tensor (or array) of the size of the image's
      ground-truth PNG (the original image size);
    * ``segments_info`` a list of dicts (``id``, ``category_id``, optional ``isthing``: the
      category is a contiguous class id when ``isthing`` is given, else a dataset category id,
      as in Detectron2) with id 0 = void, taken as the model gives it; or ``None``: then
      ``panoptic_img`` holds ``class * label_divisor + instance`` with -1 = void
      (Panoptic-DeepLab / COPS convention), and segments are derived from its unique values.

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
        ValueError: (constructor) not a panoptic dataset; (``process``, naming the image) an
            ``image_id`` that is not in the ground truth, a ``panoptic_img`` that is not an
            integer map of its ground truth's size, or a class that is not one of the dataset;
            (``evaluate``) see :meth:`evaluate`.
        AttributeError: (constructor, from Detectron2's ``Metadata``) the dataset has no
            ``panoptic_json``/``panoptic_root``.
    """

    def __init__(
        self, dataset_name: str, output_dir: Optional[str] = None, *, num_processes: int = 1
    ):
        info = get_panoptic_metadata(dataset_name)
        super().__init__(dataset_name, output_dir)
        self._dataset_name = dataset_name
        self._label_divisor = info["label_divisor"]
        thing, stuff = self._thing_contiguous_id_to_dataset_id, self._stuff_contiguous_id_to_dataset_id
        self._contiguous_to_dataset = {**thing, **stuff}
        self._dataset_ids = set(self._contiguous_to_dataset.values())
        self._num_processes = int(num_processes)
        self._gt_png = {
            a["image_id"]: os.path.join(self._metadata.panoptic_root, a["file_name"])
            for a in read_json(self._metadata.panoptic_json, "panoptic_json")["annotations"]
        }
        self.reset()

    def _category(self, category_id, contiguous: bool, context: str) -> int:
        """The dataset category id of a predicted class (a contiguous class id if
        ``contiguous``, else a dataset category id)."""
        cat = int(category_id)
        if contiguous and cat in self._contiguous_to_dataset:
            return self._contiguous_to_dataset[cat]
        if not contiguous and cat in self._dataset_ids:
            return cat
        raise ValueError(
            f"{context}: predicted {'contiguous' if contiguous else 'dataset'} class {cat} is "
            f"not a class of dataset '{self._dataset_name}'"
        )

    def process(self, inputs, outputs):
        """Check and encode the ``panoptic_seg`` of each output (see the class docstring).

        Raises:
            ValueError: see the class docstring; names the image.
        """
        for input, output in zip(inputs, outputs):
            context = f"image '{input['file_name']}' (image_id {input['image_id']!r})"
            gt_png = self._gt_png.get(input["image_id"])
            if gt_png is None:
                raise ValueError(
                    f"{context} is not an image of the ground truth "
                    f"'{self._metadata.panoptic_json}'"
                )
            panoptic_img, segments_info = output["panoptic_seg"]
            if hasattr(panoptic_img, "cpu"):
                panoptic_img = panoptic_img.cpu().numpy()
            panoptic_img, size = np.asarray(panoptic_img), png_size(gt_png)
            if panoptic_img.shape != size or not np.issubdtype(panoptic_img.dtype, np.integer):
                raise ValueError(
                    f"{context}: panoptic_seg[0] must be an integer map of the size [H, W] = "
                    f"{list(size)} of the ground truth '{gt_png}', got shape "
                    f"{list(panoptic_img.shape)} and dtype {panoptic_img.dtype}"
                )
            if segments_info is None:  # class * label_divisor + instance, -1 = void
                divisor = self._label_divisor
                segments_info = [
                    {"id": v + 1, "category_id": self._category(v // divisor, True, context)}
                    for v in np.unique(panoptic_img).tolist()
                    if v != -1
                ]
                panoptic_img = panoptic_img.astype(np.int64) + 1  # the COCO format: 0 = void
            else:
                segments_info = [
                    {
                        **{k: v for k, v in s.items() if k != "isthing"},
                        "id": int(s["id"]),
                        "category_id": self._category(
                            s["category_id"], s.get("isthing") is not None, context
                        ),
                    }
                    for s in segments_info
                ]
            with io.BytesIO() as out:
                Image.fromarray(id2rgb(panoptic_img)).save(out, format="PNG")
                png_string = out.getvalue()
            stem = os.path.splitext(os.path.basename(input["file_name"]))[0]
            self._predictions.append(
                {
                    "image_id": input["image_id"],
                    "file_name": stem + ".png",
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
                training sampler, would count it twice), or ground-truth images without a
                prediction (names the image ids).
        """
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None
        logger.info(
            f"Panoptic evaluation of {len(predictions)} images gathered from "
            f"{comm.get_world_size()} process(es)"
        )
        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        json_data = read_json(gt_json, "panoptic_json")
        categories = json_data.get("categories")
        if not categories and self._metadata.get("categories_file"):
            categories = read_json(self._metadata.categories_file, "category file")
        annotations = [{k: v for k, v in p.items() if k != "png_string"} for p in predictions]
        pairs = _pair_up(
            json_data["annotations"],
            annotations,
            f"dataset '{self._dataset_name}' ({comm.get_world_size()} process(es); each image "
            "must be evaluated once, e.g. with Detectron2's InferenceSampler)",
        )
        _make_png_names_unique(annotations)

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
            for p, a in zip(predictions, annotations):
                with PathManager.open(os.path.join(pred_dir, a["file_name"]), "wb") as f:
                    f.write(p["png_string"])
            json_data["annotations"] = annotations
            with PathManager.open(os.path.join(out_dir, "predictions.json"), "w") as f:
                f.write(json.dumps(json_data))
            pq_res = _pq_average(pairs, gt_folder, pred_dir, categories, self._num_processes)

        res = {}
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for key in ("pq", "sq", "rq"):
                res[key.upper() + suffix] = 100.0 * float(pq_res[group][key])
        print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})
