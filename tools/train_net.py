#!/usr/bin/env python3
"""Train or evaluate COPS (Abbas & Swoboda, NeurIPS 2021) with Detectron2's ``DefaultTrainer``.

A thin script in the style of Detectron2's ``projects/Panoptic-DeepLab/train_net.py``. Both
training stages use it; the YAML decides which (``MODEL.COPS.FULLY_DIFFERENTIABLE``):

    # stage 1: pretraining (DeepLabCE + affinity BCE); the authors used 1 GPU, batch 12
    python tools/train_net.py --num-gpus 1 \\
        --config-file configs/Cityscapes-PanopticSegmentation/cops_R_52_pretrain.yaml
    # stage 2: fully differentiable training through the AMWC layer (PQ surrogate)
    python tools/train_net.py --num-gpus 1 \\
        --config-file configs/Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml
    # evaluation
    python tools/train_net.py --eval-only --config-file <yaml> MODEL.WEIGHTS <model.pth>

It also trains and evaluates Detectron2's own Panoptic-DeepLab (``META_ARCHITECTURE:
"PanopticDeepLab"``, e.g. ``configs/Cityscapes-PanopticSegmentation/panoptic_deeplab_R_18_512x256.yaml``)
with its own dataset mapper and the same evaluators, as the baseline to compare COPS with.

Several processes (Detectron2's ``launch``, ``torch.distributed``): ``--num-gpus N`` starts N
processes per machine, ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT`` joins M
machines. On GPUs each process drives one GPU and they communicate with NCCL; on a machine
without CUDA (``MODEL.DEVICE cpu``) ``--num-gpus N`` means N CPU processes communicating with
gloo. The total batch ``SOLVER.IMS_PER_BATCH`` is split evenly over the ``N * M`` processes, so
``N * M`` must divide it (checked before any process starts). Training is data-parallel
(``DistributedDataParallel``): the parameters are the same on every process after every step.
Evaluation (``--eval-only`` or at the end of training) runs each process on its share of the
images and the evaluators gather the predictions, so every image is counted once. Batch norm
statistics: with ``NORM: "BN"`` each process keeps its own running statistics (Detectron2's
convention; the checkpoint holds those of rank 0); ``"SyncBN"`` (GPUs) or ``"naiveSyncBN"``
(also on the CPU) compute them over the whole batch, which the sample configs use.

Unknown YAML keys raise Detectron2's ``KeyError: 'Non-existent config key: ...'``; all COPS keys
are added by ``add_cops_config`` before any file is merged.
"""
from __future__ import annotations

import logging
import os
import weakref

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    hooks,
    launch,
)
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detectron2_cops.config import add_cops_config  # importing the package registers its components and datasets
from detectron2_cops.data import COPSDatasetMapper
from detectron2_cops.data.datasets import check_dataset_files
from detectron2_cops.evaluation import build_cops_evaluator
from detectron2_cops.panoptic_deeplab import META_ARCHITECTURE as PANOPTIC_DEEPLAB
from detectron2_cops.panoptic_deeplab import add_panoptic_deeplab_config, import_panoptic_deeplab
from detectron2_cops.optimizer import build_optimizer as build_cops_optimizer

logger = logging.getLogger("detectron2_cops.train_net")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the COPS data mapper, evaluator, optimizer, poly LR schedule, and a
    ``DistributedDataParallel`` wrapper that works on the CPU (:meth:`build_ddp_model`)."""

    def __init__(self, cfg, final_eval: bool = True):
        """``DefaultTrainer.__init__`` (Detectron2 ``engine/defaults.py``) step by step, except that
        the model is wrapped by :meth:`build_ddp_model` instead of Detectron2's
        ``create_ddp_model(model, broadcast_buffers=False)``, which passes
        ``device_ids=[local_rank]`` also for a CPU model and so fails with several CPU processes.

        ``final_eval``: whether training ends with an evaluation of ``DATASETS.TEST``
        (Detectron2's ``EvalHook`` evaluates after the last iteration even when
        ``TEST.EVAL_PERIOD`` is 0); False (``--no-final-eval``, used by
        ``tools/run_cops_comparison.py``, which evaluates by itself) drops that hook when
        ``TEST.EVAL_PERIOD`` is 0.
        """
        self.final_eval = bool(final_eval)
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):  # setup_logger is not called for d2
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        # Assume these objects must be constructed in this order.
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = self.build_ddp_model(cfg, model)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            # Assume you want to save checkpoints together with logs/statistics
            model,
            cfg.OUTPUT_DIR,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg

        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """``DefaultTrainer.build_hooks``, without the ``EvalHook`` when ``final_eval`` (see
        ``__init__``) is False and ``TEST.EVAL_PERIOD`` is 0 (no periodic evaluation was asked
        for either)."""
        ret = super().build_hooks()
        if not self.final_eval and self.cfg.TEST.EVAL_PERIOD <= 0:
            ret = [h for h in ret if not isinstance(h, hooks.EvalHook)]
        return ret

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's ``build_model``; in pretraining (``MODEL.COPS.FULLY_DIFFERENTIABLE``
        False) the cost calibration (``model.calibration``, used only by the AMWC layer and at
        inference) is frozen (``requires_grad=False``).

        Pretraining's losses do not depend on the calibration, so its parameters never get a
        gradient. Frozen, they are left out of the optimizer and out of
        ``DistributedDataParallel``'s gradient reduction, which otherwise waits for their
        gradient and fails at the second iteration ("Expected to have finished reduction in the
        prior iteration"). This is preferred to ``find_unused_parameters=True``, which walks the
        autograd graph at every iteration and would also hide parameters that lose their
        gradient by mistake. Single-process training is unchanged: a parameter without a
        gradient is not updated by Adam or SGD either.
        """
        model = super().build_model(cfg)
        calibration = getattr(model, "calibration", None)
        if not cfg.MODEL.COPS.FULLY_DIFFERENTIABLE and isinstance(calibration, torch.nn.Module):
            calibration.requires_grad_(False)
        return model

    @classmethod
    def build_ddp_model(cls, cfg, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap ``model`` in ``DistributedDataParallel`` when there are several processes.

        As Detectron2's ``create_ddp_model`` (``broadcast_buffers=False``: batch norm buffers
        are not broadcast at every forward), with ``device_ids=[local_rank]`` for a CUDA model
        and ``device_ids=None`` for a CPU model (gloo), as ``torch.nn.parallel.
        DistributedDataParallel`` requires. Only parameters with ``requires_grad`` take part
        (frozen prefixes, frozen BN, and the calibration in pretraining are excluded), so every
        parameter that DDP reduces gets a gradient at every iteration and
        ``find_unused_parameters`` stays False. DDP broadcasts rank 0's parameters and buffers
        when it is built, so all processes start from the same model.

        Returns:
            ``model`` itself for one process, else the DDP wrapper.
        """
        if comm.get_world_size() == 1:
            return model
        param = next(model.parameters(), None)
        on_cuda = param is not None and param.device.type == "cuda"
        device_ids = [comm.get_local_rank()] if on_cuda else None
        return create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)

    @classmethod
    def build_train_loader(cls, cfg):
        """Training loader over ``cfg.DATASETS.TRAIN`` with ``COPSDatasetMapper(cfg, True)``
        (augmentation, semantic / affinity / panoptic targets), or Detectron2's
        ``PanopticDeeplabDatasetMapper(cfg)`` for the Panoptic-DeepLab baseline (the same
        resize, crop and flip; its own centre and offset targets)."""
        if cfg.MODEL.META_ARCHITECTURE == PANOPTIC_DEEPLAB:
            mapper = import_panoptic_deeplab().PanopticDeeplabDatasetMapper(cfg)
        else:
            mapper = COPSDatasetMapper(cfg, True)
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Inference loader for ``dataset_name`` with ``COPSDatasetMapper(cfg, False)``, or
        Detectron2's default mapper for the Panoptic-DeepLab baseline (both resize to
        ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``)."""
        if cfg.MODEL.META_ARCHITECTURE == PANOPTIC_DEEPLAB:
            return build_detection_test_loader(cfg, dataset_name)
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
        group). See :func:`detectron2_cops.optimizer.build_optimizer`."""
        return build_cops_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """``WarmupPolyLR`` (``SOLVER.POLY_LR_POWER``, ``POLY_LR_CONSTANT_ENDING``) when
        ``SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"``, else Detectron2's schedulers (through
        ``detectron2.projects.deeplab.build_lr_scheduler``)."""
        return build_deeplab_lr_scheduler(cfg, optimizer)


def build_config(args):
    """The frozen config: Detectron2 defaults + ``add_cops_config`` + Panoptic-DeepLab's keys
    that COPS lacks (for the baseline config; COPS configs resolve as without them) + the YAML
    + the command-line ``KEY VALUE`` overrides."""
    cfg = get_cfg()
    add_cops_config(cfg)
    add_panoptic_deeplab_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def setup(args):
    """:func:`build_config`, then Detectron2's ``default_setup`` (output folder, logging, seed
    ``SEED + rank``)."""
    cfg = build_config(args)
    default_setup(cfg, args)
    # Our modules log under "detectron2_cops" (e.g. the PQ table of the panoptic evaluator).
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2_cops")
    return cfg


def check_args(args, cfg) -> None:
    """Check the process layout and the datasets before any process starts.

    Raises:
        ValueError: ``--num-gpus`` or ``--num-machines`` below 1, ``--machine-rank`` outside
            ``[0, num_machines)``, ``--dist-url auto`` with several machines, a ``MODEL.DEVICE``
            that is not a device; for training, ``SOLVER.IMS_PER_BATCH`` below 1 or not
            divisible by the number of processes
            ``num_gpus * num_machines`` (each process takes ``IMS_PER_BATCH / processes``
            images per iteration); several processes with ``MODEL.DEVICE`` on CUDA but fewer
            GPUs than ``--num-gpus``, or on the CPU while CUDA is available (Detectron2's
            ``launch`` then picks NCCL, which cannot reduce CPU tensors).
        FileNotFoundError: a dataset of ``DATASETS.TRAIN`` (training) or ``DATASETS.TEST`` whose
            files are not there (names the folder it looked in;
            :func:`detectron2_cops.data.datasets.check_dataset_files`).
        ValueError: a dataset name that is not registered.
    """
    if args.num_gpus < 1:
        raise ValueError(f"--num-gpus must be >= 1 (processes per machine), got {args.num_gpus}")
    if args.num_machines < 1:
        raise ValueError(f"--num-machines must be >= 1, got {args.num_machines}")
    if not 0 <= args.machine_rank < args.num_machines:
        raise ValueError(
            f"--machine-rank must lie in [0, --num-machines={args.num_machines}), "
            f"got {args.machine_rank}"
        )
    world_size = args.num_gpus * args.num_machines
    if args.num_machines > 1 and args.dist_url == "auto":
        raise ValueError(
            "--dist-url auto works on one machine only; with --num-machines > 1 pass the "
            "address of machine 0, e.g. --dist-url tcp://HOST:PORT, on every machine"
        )
    batch = int(cfg.SOLVER.IMS_PER_BATCH)
    if not args.eval_only and batch < 1:
        raise ValueError(f"SOLVER.IMS_PER_BATCH must be >= 1, got {batch}")
    if not args.eval_only and batch % world_size != 0:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH = {batch} is not divisible by the number of processes "
            f"{world_size} (--num-gpus {args.num_gpus} x --num-machines {args.num_machines}): "
            f"each process trains on IMS_PER_BATCH / processes images per iteration. Use a "
            f"number of processes in {divisors}, or set SOLVER.IMS_PER_BATCH to a multiple of "
            f"{world_size}."
        )
    try:
        device = torch.device(cfg.MODEL.DEVICE)
    except RuntimeError as e:
        raise ValueError(f"MODEL.DEVICE {cfg.MODEL.DEVICE!r} is not a device (e.g. cpu, cuda, cuda:1): {e}") from None
    if world_size > 1 and device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if args.num_gpus > available:
            raise ValueError(
                f"--num-gpus {args.num_gpus} with MODEL.DEVICE {cfg.MODEL.DEVICE!r}, but this "
                f"machine has {available} CUDA device(s); for CPU processes set MODEL.DEVICE cpu"
            )
    if world_size > 1 and device.type == "cpu" and torch.cuda.is_available():
        raise ValueError(
            "several processes with MODEL.DEVICE cpu on a machine with CUDA: Detectron2's launch "
            "then uses NCCL, which cannot reduce CPU tensors. Set MODEL.DEVICE cuda, or hide the "
            "GPUs (CUDA_VISIBLE_DEVICES=) to train CPU processes with gloo."
        )
    names = list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
    for name in dict.fromkeys(names):
        check_dataset_files(name)


def _limit_cpu_threads(cfg) -> None:
    """With several CPU processes on one machine, give each ``cores / processes`` intra-op
    threads (unless ``OMP_NUM_THREADS`` is set) instead of PyTorch's default of all cores per
    process, which oversubscribes the CPU."""
    if comm.get_local_size() <= 1 or torch.device(cfg.MODEL.DEVICE).type != "cpu":
        return
    if os.environ.get("OMP_NUM_THREADS"):
        return
    threads = max(1, (os.cpu_count() or 1) // comm.get_local_size())
    torch.set_num_threads(threads)
    logger.info(f"{comm.get_local_size()} CPU processes on this machine: {threads} thread(s) each")


def main(args):
    cfg = setup(args)
    _limit_cpu_threads(cfg)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg, final_eval=not getattr(args, "no_final_eval", False))
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    """Detectron2's ``default_argument_parser`` (``--config-file``, ``--resume``,
    ``--eval-only``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``,
    ``KEY VALUE`` overrides) plus ``--no-final-eval``."""
    parser = default_argument_parser(
        epilog="On a machine without CUDA (MODEL.DEVICE cpu), --num-gpus N starts N CPU "
        "processes (gloo). --num-gpus x --num-machines must divide SOLVER.IMS_PER_BATCH."
    )
    parser.add_argument(
        "--no-final-eval", action="store_true",
        help="with TEST.EVAL_PERIOD 0, do not evaluate DATASETS.TEST after the last iteration "
        "(Detectron2's EvalHook otherwise does)",
    )
    return parser


def invoke_main(argv=None, main_func=main) -> None:
    """Parse the command line, check it with :func:`check_args` (a bad layout or a missing
    dataset exits with status 2 and the reason before any process starts), then run
    ``main_func(args)`` in ``--num-gpus`` processes on this machine through Detectron2's
    ``launch``."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    print("Command Line Args:", args)
    if not args.config_file:
        parser.error("--config-file is required (e.g. configs/sample/cops_R_18_pretrain.yaml)")
    try:
        cfg = build_config(args)
    except (AssertionError, KeyError, ValueError, TypeError, FileNotFoundError) as e:  # yacs' errors
        parser.error(f"the config ({args.config_file} with the overrides) cannot be read: {type(e).__name__}: {e}")
    try:
        check_args(args, cfg)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
