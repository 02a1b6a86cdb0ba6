"""The evaluators of COPS for a dataset (used by ``tools/train_net.py``'s ``build_evaluator``)."""

from __future__ import annotations

import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from detectron2_cops.data.datasets import register_panoptic_instances_view, require_registered

from .cityscapes_evaluation import CityscapesInstanceEvaluator
from .panoptic_evaluation import PanopticEvaluator
from .sem_seg_evaluation import PanopticSemSegEvaluator

__all__ = ["build_cops_evaluator", "SUPPORTED_EVALUATOR_TYPES"]

#: ``evaluator_type`` metadata values :func:`build_cops_evaluator` knows.
SUPPORTED_EVALUATOR_TYPES = ("coco_panoptic_seg", "cityscapes_panoptic_seg")


def _coco_instances_dataset(dataset_name: str) -> str:
    """The instance dataset matching a COCO panoptic dataset: Detectron2's builtin
    ``coco_2017_val_panoptic`` -> ``coco_2017_val`` (as Panoptic-DeepLab's ``train_net.py``),
    else an instances view of the panoptic ground truth."""
    if dataset_name.endswith("_panoptic"):
        candidate = dataset_name[: -len("_panoptic")]
        if candidate in DatasetCatalog.list() and MetadataCatalog.get(candidate).get("evaluator_type") == "coco":
            return candidate
    return register_panoptic_instances_view(dataset_name)


def build_cops_evaluator(
    cfg, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluators:
    """Evaluators of COPS for ``dataset_name``, chosen by its ``evaluator_type`` metadata.

    * ``coco_panoptic_seg`` and ``cityscapes_panoptic_seg``: :class:`PanopticEvaluator`
      (PQ/SQ/RQ) and two :class:`PanopticSemSegEvaluator` (Detectron2's ``SemSegEvaluator``:
      mIoU): result key ``sem_seg`` scores the model's ``"sem_seg"`` output (COPS: the AMWC
      node labels, the paper's mIoU), result key ``sem_seg_head`` its ``"sem_seg_head"`` output
      (the semantic head's argmax; only when ``cfg.MODEL.COPS.PREDICT_SEM_SEG_HEAD``);
    * plus, when ``cfg.MODEL.COPS.PREDICT_INSTANCES``: :class:`CityscapesInstanceEvaluator`
      (AP, AP50) for Cityscapes; Detectron2's ``COCOEvaluator`` with ``tasks=("segm",)`` for COCO
      (on Detectron2's matching instance dataset, e.g. ``coco_2017_val``, or on
      ``<name>_instances`` derived from the panoptic ground truth, which needs
      ``output_folder`` to cache its COCO json).

    Args:
        cfg: config with the COPS keys.
        dataset_name: a registered dataset.
        output_folder: where evaluators save predictions (optional).
    Returns:
        ``DatasetEvaluators``.
    Raises:
        ValueError: the dataset is not registered, or its ``evaluator_type`` is missing or not
            in :data:`SUPPORTED_EVALUATOR_TYPES`.
    """
    require_registered(dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type not in SUPPORTED_EVALUATOR_TYPES:
        raise ValueError(
            f"COPS has no evaluator for dataset '{dataset_name}' with evaluator_type "
            f"{evaluator_type!r}; supported: {list(SUPPORTED_EVALUATOR_TYPES)} (panoptic datasets)"
        )
    evaluators = [PanopticEvaluator(dataset_name, output_folder),
                  PanopticSemSegEvaluator(dataset_name, output_dir=output_folder)]
    if cfg.MODEL.COPS.PREDICT_SEM_SEG_HEAD:
        head_dir = os.path.join(output_folder, "sem_seg_head") if output_folder else None
        evaluators.append(PanopticSemSegEvaluator(dataset_name, output_dir=head_dir, output_key="sem_seg_head"))
    if cfg.MODEL.COPS.PREDICT_INSTANCES:
        if evaluator_type == "cityscapes_panoptic_seg":
            evaluators.append(CityscapesInstanceEvaluator(dataset_name))
        else:
            instances = _coco_instances_dataset(dataset_name)
            evaluators.append(COCOEvaluator(instances, tasks=("segm",), output_dir=output_folder))
    return DatasetEvaluators(evaluators)
