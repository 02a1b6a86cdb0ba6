"""Optimizer of COPS: Adam/SGD with the authors' per-part learning rates in the fully
differentiable stage.

Source: the authors' ``train_net.py`` (``Trainer.build_optimizer``). In their fine-tuning mode
(stage 2) every trainable part gets its own parameter group with learning rate
``BASE_LR / (LEARNING_RATE_REDUCTION_PER_STAGE * k)`` (``k = 0``: ``BASE_LR``), ``k`` counting the
parts between it and the cost calibration::

    semantic head convs  k = 2  (/40)      affinity head convs         k = 3  (/60)
    semantic predictor   k = 1  (/20)      per-distance classifiers    k = 2  (/40)
    semantic calibration k = 0             per-distance predictors     k = 1  (/20)
                                           edge calibration            k = 0

and everything else (backbone, both decoders) is frozen. Here the parts are named by parameter
name patterns (``SOLVER.LR_GROUP_PATTERNS`` / ``LR_GROUP_STAGES``, see ``config.py``).
"""
from __future__ import annotations

import fnmatch
import logging
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from .checks import as_float, unmatched_entry_error

__all__ = ["build_param_groups", "build_optimizer", "match_pattern"]

logger = logging.getLogger(__name__)

# Normalisation layers, whose parameters get WEIGHT_DECAY_NORM: the types of Detectron2's
# get_default_optimizer_params (NaiveSyncBatchNorm is a BatchNorm2d; FrozenBatchNorm2d has no
# parameters).
_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def match_pattern(name: str, pattern: str) -> bool:
    """True if the parameter ``name`` matches ``pattern``: ``fnmatch`` (``*`` also crosses
    dots) on the whole name, or on a module prefix of it (``"a.b"`` matches ``"a.b.c.weight"``,
    not ``"a.bc.weight"``)."""
    p = pattern.rstrip(".")
    return fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*")


def build_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    patterns: Sequence[str],
    stages: Sequence[float],
    reduction_per_stage: float,
    weight_decay: float = 0.0,
    weight_decay_norm: float = 0.0,
    weight_decay_bias: Optional[float] = None,
    bias_lr_factor: float = 1.0,
    freeze_others: bool = True,
) -> Tuple[List[dict], List[dict]]:
    """Optimizer parameter groups with one learning rate per part (authors' ``build_optimizer``).

    A parameter that matches ``patterns[k]`` (:func:`match_pattern`) trains at
    ``lr_k = base_lr / (reduction_per_stage * stages[k])`` (``stages[k] == 0``: ``base_lr``; the
    authors' ``lr / lr_reduction`` with ``lr_reduction = 0`` read as 1), times ``bias_lr_factor``
    for biases. Weight decay as Detectron2's ``get_default_optimizer_params``:
    ``weight_decay_norm`` for parameters of normalisation layers, ``weight_decay_bias`` for
    biases, ``weight_decay`` otherwise (the authors use 0 everywhere in stage 2). Parameters
    with ``requires_grad=False`` are never added. A trainable parameter matching no pattern is
    frozen (``requires_grad=False``, the authors' fine-tuning mode) if ``freeze_others``, else it
    trains at ``base_lr``.

    Args:
        model: the model (``named_modules`` / ``named_parameters`` are searched).
        base_lr, patterns, stages, reduction_per_stage, freeze_others: ``SOLVER.BASE_LR``,
            ``LR_GROUP_PATTERNS``, ``LR_GROUP_STAGES`` (one per pattern),
            ``LR_REDUCTION_PER_STAGE`` (authors: 20), ``LR_GROUP_FREEZE_OTHERS``.
        weight_decay, weight_decay_norm, weight_decay_bias, bias_lr_factor: as Detectron2
            (``weight_decay_bias=None``: ``weight_decay``).

    Returns:
        ``(param_groups, summary)``: ``param_groups`` for ``torch.optim`` (one per
        (pattern, lr, weight decay), each with the extra key ``"name"`` = the pattern; empty
        when no parameter trains, which :func:`build_optimizer` refuses);
        ``summary`` has one dict per pattern (and one ``"<other>"`` entry if unmatched
        parameters train) with ``pattern``, ``lr``, ``num_tensors``, ``num_params``.

    Raises:
        ValueError: naming the ``SOLVER`` key: ``patterns`` and ``stages`` of different lengths,
            a stage that is not a finite number ``>= 0``, a ``base_lr`` or ``reduction_per_stage``
            that is not finite and ``> 0``, a pattern (the empty one included) that matches no
            parameter of the model, or a parameter matched by two patterns.
    """
    patterns = [str(p) for p in patterns]
    if len(patterns) != len(stages):
        raise ValueError(
            f"SOLVER.LR_GROUP_PATTERNS ({len(patterns)} entries) and SOLVER.LR_GROUP_STAGES "
            f"({len(stages)} entries) must have the same length"
        )
    base_lr = as_float(base_lr, "SOLVER.BASE_LR", positive=True)
    reduction_per_stage = as_float(reduction_per_stage, "SOLVER.LR_REDUCTION_PER_STAGE", positive=True)
    stages = [as_float(k, f"SOLVER.LR_GROUP_STAGES[{i}]", 0) for i, k in enumerate(stages)]
    if weight_decay_bias is None:
        weight_decay_bias = weight_decay
    names = [n for n, _ in model.named_parameters()]
    owner: Dict[str, int] = {}
    for k, p in enumerate(patterns):
        matched = [n for n in names if match_pattern(n, p)]
        if not matched:
            raise unmatched_entry_error("SOLVER.LR_GROUP_PATTERNS", p, names)
        for n in matched:
            if n in owner:
                raise ValueError(
                    f"parameter {n!r} matches two SOLVER.LR_GROUP_PATTERNS entries: "
                    f"{patterns[owner[n]]!r} and {p!r}"
                )
            owner[n] = k

    lrs = [base_lr / (reduction_per_stage * k) if k > 0 else base_lr for k in stages]
    groups: Dict[Tuple[int, float, float], dict] = {}
    summary = [{"pattern": p, "lr": lr, "num_tensors": 0, "num_params": 0} for p, lr in zip(patterns, lrs)]
    other = {"pattern": "<other>", "lr": base_lr, "num_tensors": 0, "num_params": 0}
    frozen: List[str] = []
    memo: Set[int] = set()
    for module_name, module in model.named_modules():
        norm = isinstance(module, _NORM_TYPES)
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in memo:
                continue
            memo.add(id(param))
            if not param.requires_grad:
                continue
            full = f"{module_name}.{pname}" if module_name else pname
            k = owner.get(full, -1)
            if k < 0 and freeze_others:
                param.requires_grad_(False)
                frozen.append(full)
                continue
            lr = lrs[k] if k >= 0 else base_lr
            wd = weight_decay_norm if norm else (weight_decay_bias if pname == "bias" else weight_decay)
            if pname == "bias":
                lr = lr * bias_lr_factor
            group = {"params": [], "lr": lr, "weight_decay": wd, "name": patterns[k] if k >= 0 else "<other>"}
            groups.setdefault((k, lr, wd), group)["params"].append(param)
            entry = summary[k] if k >= 0 else other
            entry["num_tensors"] += 1
            entry["num_params"] += param.numel()
    if other["num_tensors"]:
        summary.append(other)
    if frozen:
        logger.info(
            f"Stage-2 learning rates: froze {len(frozen)} trainable parameter tensors that match no "
            "SOLVER.LR_GROUP_PATTERNS entry (SOLVER.LR_GROUP_FREEZE_OTHERS)"
        )
    return list(groups.values()), summary


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD from ``cfg.SOLVER.OPTIMIZER`` over the trainable parameters: in the fully
    differentiable stage with non-empty ``SOLVER.LR_GROUP_PATTERNS`` the groups of
    :func:`build_param_groups` (the authors' per-part rates; one log line per group), otherwise
    Detectron2's ``get_default_optimizer_params`` (``SOLVER.WEIGHT_DECAY*``, ``BIAS_LR_FACTOR``).
    Frozen parameters are left out; gradient clipping follows ``SOLVER.CLIP_GRADIENTS``.

    Raises:
        ValueError: unknown ``SOLVER.OPTIMIZER`` (expected "ADAM" or "SGD"), no trainable
            parameter, or bad learning-rate groups (see :func:`build_param_groups`).
    """
    solver = cfg.SOLVER
    optimizer_type = str(solver.OPTIMIZER).upper()
    if optimizer_type not in ("ADAM", "SGD"):
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAM' or 'SGD', got {solver.OPTIMIZER!r}")
    common = dict(
        base_lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS, bias_lr_factor=solver.BIAS_LR_FACTOR,
    )
    if cfg.MODEL.COPS.FULLY_DIFFERENTIABLE and len(solver.LR_GROUP_PATTERNS):
        params, summary = build_param_groups(
            model, patterns=list(solver.LR_GROUP_PATTERNS), stages=list(solver.LR_GROUP_STAGES),
            reduction_per_stage=solver.LR_REDUCTION_PER_STAGE, freeze_others=solver.LR_GROUP_FREEZE_OTHERS, **common,
        )
        for entry in summary:
            logger.info(
                f"Stage-2 LR group {entry['pattern']!r}: lr {entry['lr']:.6g}, "
                f"{entry['num_tensors']} tensors, {entry['num_params']} parameters"
            )
    else:
        params = get_default_optimizer_params(model, **common)
    if not params:
        raise ValueError(
            "the model has no trainable parameter (all have requires_grad=False); check "
            "MODEL.COPS.FROZEN_PREFIXES, MODEL.BACKBONE.FREEZE_AT and in stage 2 SOLVER.LR_GROUP_PATTERNS"
        )
    num_trainable = sum(p.numel() for g in params for p in g["params"])
    logger.info(f"Optimizer {optimizer_type}: {num_trainable} trainable parameters in {len(params)} groups")
    if optimizer_type == "SGD":
        return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
        )
    return maybe_add_gradient_clipping(cfg, torch.optim.Adam)(params, lr=cfg.SOLVER.BASE_LR)
