"""Semantic segmentation metrics (mIoU, fwIoU, mACC, pACC) on panoptic datasets.

Detectron2's ``SemSegEvaluator`` reads the ground truth from ``sem_seg_file_name`` and maps
contiguous ids back to dataset ids with ``stuff_dataset_id_to_contiguous_id`` only. Panoptic
datasets (Detectron2's standard COCO panoptic, COCO-panoptic folders) have no
``sem_seg_file_name``, and their thing classes are not in the stuff map, so
:class:`PanopticSemSegEvaluator` derives the semantic ground truth from the panoptic PNG and
``segments_info`` and maps ids with the union of both maps. Everything else (confusion matrix,
metrics, boundary IoU, saved files, result keys) is Detectron2's ``SemSegEvaluator``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import List

import numpy as np
import torch
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.evaluation import sem_seg_evaluation as _d2_sem_seg
from detectron2.utils.file_io import PathManager

from detectron2_cops.data.datasets import get_panoptic_metadata
from detectron2_cops.data.panoptic_utils import rgb2id

from .panoptic_evaluation import png_size

__all__ = ["PanopticSemSegEvaluator", "panoptic_to_semantic", "OUTPUT_KEY_DESCRIPTIONS"]


def panoptic_to_semantic(
    panoptic: np.ndarray, segments_info: List[dict], ignore_label: int = 255
) -> np.ndarray:
    """Semantic labels of a panoptic ground truth.

    Args:
        panoptic: ``[H, W]`` integer segment ids (0 = void).
        segments_info: dicts with ``id`` and contiguous ``category_id`` (crowd segments keep
            their class, as in Detectron2's panoptic-to-semantic conversion).
        ignore_label: label of void pixels and of ids not in ``segments_info``.
    Returns:
        ``[H, W] int64`` contiguous class ids, ``ignore_label`` on void.
    """
    panoptic = np.asarray(panoptic)
    sem = np.full(panoptic.shape, ignore_label, dtype=np.int64)
    for seg in segments_info:
        sem[panoptic == seg["id"]] = int(seg["category_id"])
    return sem


#: What each model output key of COPS holds (for the log line of the evaluator).
OUTPUT_KEY_DESCRIPTIONS = {
    "sem_seg": "AMWC node labels (the paper's mIoU)",
    "sem_seg_head": "semantic head logits, argmax without the AMWC",
}


class PanopticSemSegEvaluator(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` with the ground truth taken from the panoptic PNGs.

    ``process`` takes ``inputs[i]`` (``file_name`` of a dataset image) and
    ``outputs[i][output_key]``: a ``[K, H, W]`` ``torch.Tensor`` of finite scores (real dtype;
    bool is read as 0/1) with ``K = len(stuff_classes)`` (Detectron2's panoptic metadata lists
    all classes there) and ``(H, W)`` the size of the image's ground-truth PNG (the original
    image size). ``evaluate`` returns Detectron2's
    ``{output_key: {"mIoU", "fwIoU", "IoU-<class>", "mACC", "pACC", ...}}`` in percent: the
    result key names the output that was scored. COPS models output ``"sem_seg"`` (one-hot
    AMWC node labels, what the paper's mIoU measures) and ``"sem_seg_head"`` (the semantic
    head's logits); the evaluator logs which one it scores.

    Args:
        dataset_name: a registered panoptic dataset (dicts with ``pan_seg_file_name`` and
            ``segments_info``).
        distributed: gather results from all ranks (Detectron2's meaning).
        output_dir: where Detectron2's ``SemSegEvaluator`` saves its files
            (``sem_seg_predictions.json``; use one folder per ``output_key``).
        output_key: the model output to score (default ``"sem_seg"``).
    Raises:
        ValueError: (constructor) not a panoptic dataset, or class ids beyond
            ``stuff_classes``; (``process``, naming the image and ``output_key``) an input whose
            ``file_name`` is not an image of the dataset, a prediction that is not a real
            ``[K, H, W]`` tensor of the ground truth's size, or one with NaN/inf values.
        KeyError: (``process``) an output without ``output_key``.
    """

    def __init__(
        self, dataset_name: str, distributed: bool = True, output_dir=None, *, output_key="sem_seg"
    ):
        self._output_key = output_key
        # Not calling SemSegEvaluator.__init__: it requires "sem_seg_file_name" in every dataset
        # dict. The attributes below are the ones its process()/evaluate() read.
        info = get_panoptic_metadata(dataset_name)
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._cpu_device = torch.device("cpu")
        self._ignore_label = info["ignore_label"]
        records = DatasetCatalog.get(dataset_name)
        self.input_file_to_gt_file = {r["file_name"]: r["pan_seg_file_name"] for r in records}
        self._segments = {r["pan_seg_file_name"]: r["segments_info"] for r in records}
        maps = ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id")
        self._contiguous_id_to_dataset_id = {v: k for m in maps for k, v in info[m].items()}
        self._class_names = list(info["metadata"].stuff_classes)
        self._num_classes = len(self._class_names)
        if info["class_ids"] and info["class_ids"][-1] >= self._num_classes:
            raise ValueError(
                f"dataset '{dataset_name}': class id {info['class_ids'][-1]} but only "
                f"{self._num_classes} stuff_classes"
            )
        self.sem_seg_loading_fn = self._load_panoptic_as_semantic
        self._compute_boundary_iou = (
            _d2_sem_seg._CV2_IMPORTED and self._num_classes < np.iinfo(np.uint8).max
        )
        self._logger.info(
            f"mIoU of '{dataset_name}' scores outputs['{output_key}'] "
            f"({OUTPUT_KEY_DESCRIPTIONS.get(output_key, 'scores [K, H, W]')}); "
            f"result key '{output_key}'"
        )

    @property
    def output_key(self) -> str:
        """The model output this evaluator scores (also its result key)."""
        return self._output_key

    def _check_prediction(self, input: dict, pred) -> torch.Tensor:
        """``pred`` if it is valid ``[K, H, W]`` scores for ``input`` (bool read as uint8)."""
        context = f"outputs['{self._output_key}'] of image '{input['file_name']}'"
        gt_file = self.input_file_to_gt_file.get(input["file_name"])
        if gt_file is None:
            raise ValueError(f"{context}: not an image of dataset '{self._dataset_name}'")
        expected = [self._num_classes, *png_size(gt_file)]
        if not isinstance(pred, torch.Tensor) or list(pred.shape) != expected or pred.is_complex():
            raise ValueError(
                f"{context} must be a real torch.Tensor of shape [K, H, W] = {expected} "
                f"(stuff_classes of dataset '{self._dataset_name}', size of the ground truth "
                f"'{gt_file}'), got {type(pred).__module__}.{type(pred).__name__} of shape "
                f"{list(getattr(pred, 'shape', []))}"
            )
        if pred.is_floating_point() and not bool(torch.isfinite(pred).all()):
            raise ValueError(f"{context} has NaN or infinite values")
        return pred.to(torch.uint8) if pred.dtype == torch.bool else pred

    def process(self, inputs, outputs):
        """Accumulate the confusion matrix (Detectron2's ``SemSegEvaluator.process``).

        Raises:
            ValueError, KeyError: see the class docstring; names the image.
        """
        selected = [
            {"sem_seg": self._check_prediction(input, output[self._output_key])}
            for input, output in zip(inputs, outputs)
        ]
        super().process(inputs, selected)

    def evaluate(self):
        results = super().evaluate()
        if results is None or self._output_key == "sem_seg":
            return results
        return OrderedDict((self._output_key, v) for v in results.values())

    def _load_panoptic_as_semantic(self, filename: str, dtype=int) -> np.ndarray:
        with PathManager.open(filename, "rb") as f:
            rgb = np.asarray(Image.open(f).convert("RGB"))
        sem = panoptic_to_semantic(rgb2id(rgb), self._segments[filename], self._ignore_label)
        return sem.astype(dtype)
