"""Evaluation of COPS without panopticapi: PQ (cityscapesscripts), mIoU on panoptic datasets,
Cityscapes instance AP through the public cityscapesscripts API, and the evaluator builder.
Needs Detectron2."""

from .build import SUPPORTED_EVALUATOR_TYPES, build_cops_evaluator
from .cityscapes_evaluation import CityscapesInstanceEvaluator
from .panoptic_evaluation import PanopticEvaluator, print_panoptic_results, pq_compute
from .sem_seg_evaluation import PanopticSemSegEvaluator, panoptic_to_semantic

__all__ = [
    "SUPPORTED_EVALUATOR_TYPES",
    "build_cops_evaluator",
    "CityscapesInstanceEvaluator",
    "PanopticEvaluator",
    "print_panoptic_results",
    "pq_compute",
    "PanopticSemSegEvaluator",
    "panoptic_to_semantic",
]
