#!/usr/bin/env python3
"""Train or evaluate COPS (Abbas & Swoboda, NeurIPS 2021) with Detectron2's ``DefaultTrainer``.

A thin script in the style of Detectron2's ``projects/Panoptic-DeepLab/train_net.py``. Both
training stages use it; the YAML decides which (``MODEL.COPS.FULLY_DIFFERENTIABLE``):

    # stage 1: pretraining (DeepLabCE + affinity BCE)
    python tools/train_net.py --num-gpus 8 \\
        --config-file configs/Cityscapes-PanopticSegmentation/cops_R_52_pretrain.yaml
    # stage 2: fully differentiable training through the AMWC layer (PQ surrogate)
    python tools/train_net.py --num-gpus 1 \\
        --config-file configs/Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml
    # evaluation
    python tools/train_net.py --eval-only --config-file <yaml> MODEL.WEIGHTS <model.pth>

Unknown YAML keys raise Detectron2's ``KeyError: 'Non-existent config key: ...'``; all COPS keys
are added by ``add_cops_config`` before any file is merged.
"""
from __future__ import annotations

import logging
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import detectron2_cops  # noqa: F401  (importing registers the COPS components and datasets)
from detectron2_cops.config import add_cops_config
from detectron2_cops.data import COPSDatasetMapper
from detectron2_cops.evaluation import build_cops_evaluator
from detectron2_cops.solver_utils import build_optimizer as build_cops_optimizer

logger = logging.getLogger("detectron2_cops.train_net")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the COPS data mapper, evaluator, optimizer and poly LR schedule."""

    @classmethod
    def build_train_loader(cls, cfg):
        """Training loader over ``cfg.DATASETS.TRAIN`` with ``COPSDatasetMapper(cfg, True)``
        (augmentation, semantic / affinity / panoptic targets)."""
        return build_detection_train_loader(cfg, mapper=COPSDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Inference loader for ``dataset_name`` with ``COPSDatasetMapper(cfg, False)``."""
        return build_detection_test_loader(cfg, dataset_name, mapper=COPSDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The COPS evaluator(s) for ``dataset_name`` (panoptic PQ without panopticapi, plus
        semantic / instance metrics where the dataset has them). Predictions are written to
        ``output_folder``, by default ``<OUTPUT_DIR>/inference`` (``DefaultTrainer.test`` passes
        none, and COCOEvaluator needs a folder for datasets without a COCO instances json)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_cops_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Adam or SGD from ``cfg.SOLVER.OPTIMIZER``; in the fully differentiable stage with the
        authors' per-part learning rates (``SOLVER.LR_GROUP_PATTERNS``, logged one line per
        group). See :func:`detectron2_cops.solver_utils.build_optimizer`."""
        return build_cops_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """``WarmupPolyLR`` (``SOLVER.POLY_LR_POWER``, ``POLY_LR_CONSTANT_ENDING``) when
        ``SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"``, else Detectron2's schedulers (through
        ``detectron2.projects.deeplab.build_lr_scheduler``)."""
        return build_deeplab_lr_scheduler(cfg, optimizer)


def setup(args):
    """Build the frozen config: Detectron2 defaults + ``add_cops_config`` + the YAML + the
    command-line ``KEY VALUE`` overrides; then Detectron2's ``default_setup`` (output folder,
    logging, seed)."""
    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # Our modules log under "detectron2_cops" (e.g. the PQ table of the panoptic evaluator).
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2_cops")
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
