"""The COPS meta-architecture (Abbas & Swoboda, "Combinatorial Optimization for Panoptic
Segmentation: A Fully Differentiable Approach", NeurIPS 2021).

A backbone, a semantic head and an affinity head predict, on the output-stride-4 grid, semantic
logits and cut logits; a learned affine calibration turns them into the costs of an asymmetric
multiway cut (AMWC), whose solution is the panoptic segmentation (paper Sec. 3.1). The structure
and the output format follow Detectron2's ``projects/Panoptic-DeepLab`` (``PanopticDeepLab``),
the training stages the original ``PanopticAffinity`` meta-architecture (the authors'
``panoptic_affinity/panoptic_seg_affinity.py``).

Inputs are checked where they enter: the config values in :meth:`COPS.from_config` (and the
heads' and post-processor's own), the batch in :meth:`COPS.forward`. The cost tensors handed to
the AMWC layer and the PQ surrogate are checked there, not here.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from detectron2_cops.checks import as_float, as_int, unmatched_entry_error
from detectron2_cops.layers.amwc_layer import AMWCLayer, NonFiniteError
from detectron2_cops.layers.calibration import CostCalibration, EdgeDropout, PixelDropout
from detectron2_cops.layers.panoptic_quality import panoptic_quality
from detectron2_cops.layers.pq_surrogate import PanopticQualitySurrogate

from .affinity_head import build_affinity_head
from .post_processing import build_post_processor, cops_dataset_metadata

__all__ = ["COPS", "freeze_parameters"]

logger = logging.getLogger(__name__)


def freeze_parameters(model: nn.Module, prefixes: Sequence[str]) -> List[str]:
    """Set ``requires_grad=False`` on the parameters whose names start with one of ``prefixes``.

    A prefix (``MODEL.COPS.FROZEN_PREFIXES``) matches a parameter name that equals it or
    continues it at a module boundary (``"sem_seg_head.decoder"`` matches
    ``"sem_seg_head.decoder.res2.project_conv.weight"``, not ``"sem_seg_head.decoder2.weight"``);
    a trailing ``"."`` is ignored. Returns the names of the frozen parameters.

    Raises:
        ValueError: a prefix (the empty one included) that matches no parameter; names the
            prefix and the top-level modules that exist.
    """
    params = dict(model.named_parameters())
    frozen: List[str] = []
    for prefix in prefixes:
        p = str(prefix).rstrip(".")
        matched = [n for n in params if n == p or n.startswith(p + ".")] if p else []
        if not matched:
            raise unmatched_entry_error("MODEL.COPS.FROZEN_PREFIXES", prefix, params)
        frozen += matched
    for n in frozen:
        params[n].requires_grad_(False)
    return sorted(set(frozen))


def _pad_or_crop(x: torch.Tensor, size: Tuple[int, int], value: float) -> torch.Tensor:
    """Pad (bottom/right, with ``value``) or crop the last two dims of ``x`` to ``size``."""
    h, w = x.shape[-2:]
    x = x[..., : size[0], : size[1]]
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph or pw:
        if x.dtype == torch.bool:
            x = F.pad(x.to(torch.uint8), (0, pw, 0, ph), value=int(value)).bool()
        else:
            x = F.pad(x, (0, pw, 0, ph), value=value)
    return x


@contextlib.contextmanager
def _config_keys(keys: str):
    """Name the config keys behind a ``ValueError`` that a component built from them raises
    (the AMWC layer, dropouts and PQ surrogate check their own arguments)."""
    try:
        yield
    except ValueError as err:
        raise ValueError(f"{keys}: {err}") from None


@META_ARCH_REGISTRY.register()
class COPS(nn.Module):
    """COPS: panoptic segmentation by an asymmetric multiway cut on learned costs.

    Modules (attribute names are part of the interface: ``MODEL.COPS.FROZEN_PREFIXES`` and
    checkpoints refer to them): ``backbone``, ``sem_seg_head`` (``COPSSemSegHead``: ``[B, K,
    H/4, W/4]`` semantic logits), ``affinity_head`` (``AffinityHead``: one ``[B, 2, H_d, W_d]``
    cut-logit map per edge distance), ``calibration`` (``CostCalibration``: ``c_V = -(a * logits
    + b)``, ``c_E = -(|a_d| * cut_logits + b_d)``), and in the fully differentiable stage
    ``amwc_layer`` (``AMWCLayer``), ``pixel_dropout`` (``PixelDropout``), ``edge_dropout``
    (``EdgeDropout``) and ``pq_surrogate`` (``PanopticQualitySurrogate``).

    Training (``model.train()``; ``batched_inputs`` from ``COPSDatasetMapper(cfg, True)``)
    returns a dict of scalar losses:

    * pretraining (paper Sec. 4): ``loss_sem_seg`` (DeepLabCE with ``sem_seg_weights``) and
      ``loss_affinity_d{d}`` (weighted BCE of the cut logits against ``affinity_targets`` /
      ``affinity_weights``); targets are padded (ignored / weight 0) or cropped to the grid.
    * fully differentiable (paper Sec. 3.3-3.5; the authors' ``PanopticAffinityAMWC``):
      ``loss_pq = pq_loss_weight * (1 - PQ~)``: calibrated costs with pixel and edge dropout go
      through the AMWC layer (forward: GAEC; backward: averaged MWC black-box gradients; pixel
      weights: the mapper's ``pixel_weights`` plus ``crowd_weight`` on crowd pixels), whose
      masks the PQ surrogate scores against ``gt_masks`` / ``gt_classes``; plus the head losses
      whose weights are non-zero. With ``pad_unmatched_gt`` every ground-truth segment left
      unmatched gets an empty mask (an extra MWC label in the backward; the authors'
      ``ComputeBestGroundTruth``). The surrogate PQ (``train_pq_surrogate``, percent),
      ``num_padded_gt``, the calibration scalars (``calib_*``), the layer's forward and the
      previous backward's times in seconds (``amwc_time``, ``amwc_solver_time``,
      ``amwc_backward_time_prev``, ``amwc_backward_solver_time_prev``) and with ``log_train_pq``
      the exact PQ of the solution on the grid (``train_pq``, ``train_pq_th``,
      ``train_pq_st``) go to the ``EventStorage`` and ``self.last_train_stats`` every
      iteration, to the log every ``log_period`` iterations.

    Inference (``model.eval()``; ``DefaultPredictor``-compatible): one dict per image with
    ``panoptic_seg``, ``sem_seg`` (one-hot AMWC node labels, what the paper's mIoU scores),
    ``sem_seg_head`` (head logits; ``MODEL.COPS.PREDICT_SEM_SEG_HEAD``) and
    ``instances`` at the input dict's ``(height, width)`` (default: the image's size), from
    :class:`~detectron2_cops.modeling.post_processing.AMWCPostProcessor`.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        affinity_head: nn.Module,
        calibration: nn.Module,
        post_processor,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        thing_ids: Sequence[int],
        label_divisor: int = 1000,
        fully_differentiable: bool = False,
        amwc_layer: Optional[nn.Module] = None,
        pixel_dropout: Optional[nn.Module] = None,
        pq_surrogate: Optional[nn.Module] = None,
        pq_loss_weight: float = 1.0,
        log_train_pq: bool = False,
        stuff_area: float = 0.0,
        instance_area: float = 0.0,
        freeze_bn: bool = False,
        frozen_prefixes: Sequence[str] = (),
        edge_dropout: Optional[nn.Module] = None,
        pad_unmatched_gt: bool = True,
        crowd_weight: float = 1.0,
        log_period: int = 20,
        min_input_size: Optional[Tuple[int, int]] = None,
    ):
        """
        Args:
            backbone, sem_seg_head, affinity_head, calibration: the modules of the class
                docstring (the heads' ``layers`` / ``losses``, ``common_stride``, the affinity
                head's ``edge_distances`` / ``edge_sampling_intervals`` are used).
            post_processor: as ``AMWCPostProcessor`` (callable, with ``postprocess``).
            pixel_mean, pixel_std: per-channel normalisation of the input image.
            size_divisibility: images are padded to a multiple of this (0 = no constraint).
            thing_ids, label_divisor: contiguous ids of the thing classes; ground-truth panoptic
                id = class * label_divisor + instance.
            fully_differentiable: the training stage; ``amwc_layer``, ``pixel_dropout``,
                ``pq_surrogate`` (and optionally ``edge_dropout``) are its modules.
            pq_loss_weight, pad_unmatched_gt, log_train_pq, log_period: see the class docstring.
            stuff_area, instance_area: area limits in input-image pixels of the logged PQ.
            freeze_bn: convert every BatchNorm to ``FrozenBatchNorm2d`` (also under ``train()``).
            frozen_prefixes: parameter-name prefixes frozen with :func:`freeze_parameters`.
            crowd_weight: weight of crowd pixels in the surrogate's IoUs and the layer's
                gradient (authors: 1; ``pixel_weights`` has 0 there).
            min_input_size: ``(height, width)`` in input pixels (the absolute crop,
                ``INPUT.CROP.SIZE``) to which a batch is padded at least: ASPP with image
                pooling needs inputs of that size. The padding has weight-0 targets; outputs are
                cropped to each image. None: no minimum.

        The values are checked where they are read from the config (:meth:`from_config`).
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.affinity_head = affinity_head
        self.calibration = calibration
        self.post_processor = post_processor
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.size_divisibility = int(size_divisibility)
        self.min_input_size = None if min_input_size is None else tuple(int(v) for v in min_input_size)
        self.thing_ids = sorted(int(t) for t in thing_ids)
        self.label_divisor = int(label_divisor)
        self.common_stride = int(sem_seg_head.common_stride)
        self.edge_distances = list(affinity_head.edge_distances)
        self.fully_differentiable = bool(fully_differentiable)
        self.amwc_layer = amwc_layer
        self.pixel_dropout = pixel_dropout
        self.edge_dropout = edge_dropout
        self.pq_surrogate = pq_surrogate
        self.pq_loss_weight = float(pq_loss_weight)
        self.pad_unmatched_gt = bool(pad_unmatched_gt)
        self.crowd_weight = float(crowd_weight)
        self.log_period = int(log_period)
        self.log_train_pq = bool(log_train_pq)
        self.stuff_area = float(stuff_area)
        self.instance_area = float(instance_area)
        self.last_train_stats: Dict[str, float] = {}

        if freeze_bn:
            for name, child in list(self.named_children()):
                new_child = FrozenBatchNorm2d.convert_frozen_batchnorm(child)
                if new_child is not child:
                    self.add_module(name, new_child)
        self.frozen_parameters = freeze_parameters(self, list(frozen_prefixes))

    @classmethod
    def from_config(cls, cfg):
        """Build every module from a config with the ``add_cops_config`` keys; the thing classes
        and ``label_divisor`` come from ``DATASETS.TRAIN[0]`` (or ``TEST[0]``) via
        :func:`~detectron2_cops.modeling.post_processing.cops_dataset_metadata`.

        Raises:
            ValueError: naming the key: the checks of the heads, the post-processor and
                ``cops_dataset_metadata``; the stage-2 modules' (prefixed with their keys);
                ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` of different lengths or a ``PIXEL_STD``
                entry not > 0; the heads' ``COMMON_STRIDE`` not equal; ``SIZE_DIVISIBILITY`` not
                an integer >= -1; a ``FROZEN_PREFIXES`` entry that matches no parameter; in stage
                2 ``PQ_LOSS_WEIGHT`` or ``SURROGATE_CROWD_WEIGHT`` not a finite number >= 0,
                ``SURROGATE_*_AREA_DIVISOR`` not finite and > 0, ``LOG_PERIOD`` not >= 1.
        """
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        sem_seg_head = build_sem_seg_head(cfg, shapes)
        affinity_head = build_affinity_head(cfg, shapes)
        if affinity_head.common_stride != sem_seg_head.common_stride:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE ({sem_seg_head.common_stride}) and "
                f"MODEL.AFFINITY_HEAD.COMMON_STRIDE ({affinity_head.common_stride}) must be equal: "
                "both heads predict on one grid"
            )
        mean, std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
        if len(mean) != len(std) or not all(as_float(v, "MODEL.PIXEL_STD") > 0 for v in std):
            raise ValueError(
                f"MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must hold one value per channel, PIXEL_STD "
                f"values > 0; got {mean} and {std}"
            )
        info = cops_dataset_metadata(cfg)
        cops = cfg.MODEL.COPS
        size_divisibility = as_int(cops.SIZE_DIVISIBILITY, "MODEL.COPS.SIZE_DIVISIBILITY", -1)
        distances = affinity_head.edge_distances
        intervals = affinity_head.edge_sampling_intervals
        crop = cfg.INPUT.CROP  # checked by the heads, which read it too
        ret = dict(
            backbone=backbone, sem_seg_head=sem_seg_head, affinity_head=affinity_head,
            calibration=CostCalibration(len(distances)), post_processor=build_post_processor(cfg),
            pixel_mean=mean, pixel_std=std,
            size_divisibility=size_divisibility if size_divisibility >= 0 else backbone.size_divisibility,
            thing_ids=info["thing_ids"], label_divisor=info["label_divisor"],
            fully_differentiable=cops.FULLY_DIFFERENTIABLE, log_train_pq=cops.LOG_TRAIN_PQ,
            stuff_area=cops.STUFF_AREA, instance_area=cops.INSTANCE_AREA,
            freeze_bn=cops.FREEZE_BN, frozen_prefixes=list(cops.FROZEN_PREFIXES),
            min_input_size=tuple(crop.SIZE) if crop.ENABLED and crop.TYPE == "absolute" else None,
        )
        if not cops.FULLY_DIFFERENTIABLE:
            return ret
        ret.update(
            pq_loss_weight=as_float(cops.PQ_LOSS_WEIGHT, "MODEL.COPS.PQ_LOSS_WEIGHT", 0),
            crowd_weight=as_float(cops.SURROGATE_CROWD_WEIGHT, "MODEL.COPS.SURROGATE_CROWD_WEIGHT", 0),
            log_period=as_int(cops.LOG_PERIOD, "MODEL.COPS.LOG_PERIOD", 1),
            pad_unmatched_gt=cops.PAD_UNMATCHED_GT,
        )
        stuff_divisor, instance_divisor = (
            as_float(cops[k], f"MODEL.COPS.{k}", positive=True)
            for k in ("SURROGATE_STUFF_AREA_DIVISOR", "SURROGATE_INSTANCE_AREA_DIVISOR")
        )
        with _config_keys(
            "MODEL.COPS.{NUM_LAMBDA_SAMPLES, LAMBDA_MIN, LAMBDA_MAX, LOCAL_SEARCH, NUM_THREADS, "
            "MIN_THING_CLUSTER_SIZE, BACKWARD_WARM_START, BACKWARD_FLOAT32}"
        ):
            ret["amwc_layer"] = AMWCLayer(
                sem_seg_head.num_classes, info["thing_ids"], distances, intervals,
                num_samples=cops.NUM_LAMBDA_SAMPLES, lambda_min=cops.LAMBDA_MIN, lambda_max=cops.LAMBDA_MAX,
                local_search=cops.LOCAL_SEARCH, num_threads=cops.NUM_THREADS,
                min_thing_cluster_size=cops.MIN_THING_CLUSTER_SIZE,
                backward_warm_start=cops.BACKWARD_WARM_START, backward_float32=cops.BACKWARD_FLOAT32,
            )
        with _config_keys("MODEL.COPS.PIXEL_DROPOUT"):
            ret["pixel_dropout"] = PixelDropout(cops.PIXEL_DROPOUT)
        with _config_keys("MODEL.COPS.EDGE_DROPOUT"):
            ret["edge_dropout"] = EdgeDropout(cops.EDGE_DROPOUT)
        with _config_keys(
            "MODEL.COPS.{STUFF_AREA, INSTANCE_AREA, SURROGATE_RATIO_EPS, SURROGATE_RULE, "
            "SURROGATE_MATCH_ZERO_OVERLAP}"
        ):
            ret["pq_surrogate"] = PanopticQualitySurrogate(
                info["thing_ids"], stuff_area=cops.STUFF_AREA / stuff_divisor,
                instance_area=cops.INSTANCE_AREA / instance_divisor, ratio_eps=cops.SURROGATE_RATIO_EPS,
                rule=cops.SURROGATE_RULE, match_zero_overlap=cops.SURROGATE_MATCH_ZERO_OVERLAP,
            )
        return ret

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs: List[dict]) -> ImageList:
        """Normalise and pad the images (``[C, H, W]`` each; uint8 or another integer or float
        dtype, read as ``pixel_mean``'s dtype; a one-channel image is repeated to the channels
        of ``pixel_mean``) into an ``ImageList``.

        Raises:
            ValueError: not a non-empty list of dicts with an ``image``; an image that is not a
                ``[C, H, W]`` tensor with ``C`` = the channels of ``MODEL.PIXEL_MEAN`` (or 1), is
                empty, bool or complex, or (float) holds NaN or inf.
        """
        if not isinstance(batched_inputs, (list, tuple)) or len(batched_inputs) == 0:
            raise ValueError("batched_inputs must be a non-empty list of dicts with an 'image'")
        channels = self.pixel_mean.shape[0]
        images = []
        for i, x in enumerate(batched_inputs):
            img = x.get("image") if isinstance(x, dict) else None
            shaped = isinstance(img, torch.Tensor) and img.dim() == 3 and img.shape[0] in (1, channels)
            if not shaped or img.numel() == 0 or img.dtype == torch.bool or img.is_complex():
                got = f"{list(img.shape)} {img.dtype}" if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(
                    f"batched_inputs[{i}]['image'] must be a non-empty [C, H, W] tensor with C = "
                    f"{channels} (or 1, repeated) and an integer or float dtype, got {got}"
                )
            if img.is_floating_point() and not bool(torch.isfinite(img).all()):
                raise ValueError(f"batched_inputs[{i}]['image'] contains NaN or inf")
            img = img.to(self.device, self.pixel_mean.dtype)  # one channel broadcasts to the mean's channels
            images.append((img - self.pixel_mean) / self.pixel_std)
        image_list = ImageList.from_tensors(images, self.size_divisibility)
        if self.min_input_size is not None:
            # Targets are padded to the network's grid with weight 0 in ``losses``; outputs are
            # cropped to ``image_sizes``.
            size = [max(m, n) for m, n in zip(self.min_input_size, image_list.tensor.shape[-2:])]
            image_list = ImageList(_pad_or_crop(image_list.tensor, size, 0.0), image_list.image_sizes)
        return image_list

    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs: list of dicts, outputs of ``COPSDatasetMapper``: ``image`` (see
                :meth:`preprocess_image`); in training the targets of the class docstring; at
                inference optionally ``height`` / ``width``, the output size in pixels.
        Returns:
            training: ``dict[str, Tensor]`` of losses; inference: one dict of outputs per image.
        Raises:
            ValueError: naming the entry of ``batched_inputs``: a bad image; in training a missing
                target, or ``affinity_targets`` / ``affinity_weights`` not one map per edge
                distance; at inference a ``height`` / ``width`` that is not a positive integer.
            FloatingPointError: the fully differentiable stage diverged (NaN / inf in the
                calibrated costs or ``loss_pq``); names the tensor and the iteration.
        """
        images = self.preprocess_image(batched_inputs)
        if self.training:
            self._check_training_batch(batched_inputs)
        else:
            output_sizes = [
                (as_int(x.get("height", h), f"batched_inputs[{i}]['height']", 1),
                 as_int(x.get("width", w), f"batched_inputs[{i}]['width']", 1))
                for i, (x, (h, w)) in enumerate(zip(batched_inputs, images.image_sizes))
            ]
        features = self.backbone(images.tensor)
        sem_seg_logits = self.sem_seg_head.layers(features)
        cut_logits = self.affinity_head.layers(features, sem_seg_logits)
        if self.training:
            return self.losses(batched_inputs, sem_seg_logits, cut_logits)
        image_sizes = [tuple(int(v) for v in s) for s in images.image_sizes]
        return self.post_processor.postprocess(
            sem_seg_logits, cut_logits, image_sizes, output_sizes, calibration=self.calibration
        )

    # ------------------------------------------------------------------ targets
    def required_training_keys(self) -> List[str]:
        """The keys of ``COPSDatasetMapper``'s training dicts the configured stage reads."""
        keys = []
        if getattr(self.sem_seg_head, "loss_weight", 1.0) != 0:
            keys += ["sem_seg", "sem_seg_weights"]
        if getattr(self.affinity_head, "loss_weight", 1.0) != 0:
            keys += ["affinity_targets", "affinity_weights"]
        if self.fully_differentiable:
            keys += ["pixel_weights", "affinity_weights", "gt_masks", "gt_classes"]
            if self.log_train_pq or self.crowd_weight != 0:
                keys += ["panoptic_ids", "crowd_ids"]
        return list(dict.fromkeys(keys))

    def _check_training_batch(self, batched_inputs: List[dict]) -> None:
        keys = self.required_training_keys()
        for i, x in enumerate(batched_inputs):
            missing = [k for k in keys if k not in x]
            if missing:
                raise ValueError(
                    f"training needs the targets of COPSDatasetMapper(cfg, is_train=True); "
                    f"batched_inputs[{i}] lacks {missing}"
                )
            counts = [len(x[k]) for k in ("affinity_targets", "affinity_weights") if k in keys]
            if any(n != len(self.edge_distances) for n in counts):
                raise ValueError(
                    f"batched_inputs[{i}]: affinity_targets / affinity_weights must hold one map per "
                    f"edge distance {self.edge_distances}, got {counts} (mapper and model configs differ?)"
                )

    def _stack(self, maps: List[torch.Tensor], size: Tuple[int, int], value, dtype=None) -> torch.Tensor:
        """Stack the per-image ``maps`` (as ``dtype``) padded (with ``value``) or cropped to ``size``
        -> ``[B, *size]``."""
        return torch.stack([_pad_or_crop(m.to(self.device, dtype), tuple(size), value) for m in maps])

    def _edge_maps(self, batched_inputs, key: str, cut_logits) -> List[torch.Tensor]:
        """The per-distance maps ``batched_inputs[i][key][d]`` (``affinity_targets`` or
        ``affinity_weights``), padded (with 0) or cropped to the cut logits' grids."""
        return [self._stack([x[key][d] for x in batched_inputs], m.shape[-2:], 0.0)
                for d, m in enumerate(cut_logits)]

    def head_losses(self, batched_inputs, sem_seg_logits, cut_logits) -> Dict[str, torch.Tensor]:
        """The pretraining losses of both heads (see the class docstring); heads whose loss
        weight is 0 return nothing."""
        losses: Dict[str, torch.Tensor] = {}
        h, w = sem_seg_logits.shape[-2:]
        full = (h * self.common_stride, w * self.common_stride)
        if getattr(self.sem_seg_head, "loss_weight", 1.0) != 0:
            ignore = self.sem_seg_head.ignore_value
            targets = self._stack([x["sem_seg"] for x in batched_inputs], full, ignore, torch.long)
            weights = self._stack([x["sem_seg_weights"] for x in batched_inputs], full, 0.0, torch.float32)
            losses.update(self.sem_seg_head.losses(sem_seg_logits, targets, weights))
        if getattr(self.affinity_head, "loss_weight", 1.0) != 0:
            targets = self._edge_maps(batched_inputs, "affinity_targets", cut_logits)
            weights = self._edge_maps(batched_inputs, "affinity_weights", cut_logits)
            losses.update(self.affinity_head.losses(cut_logits, targets, weights))
        return losses

    # ------------------------------------------------------------------ losses
    def losses(self, batched_inputs, sem_seg_logits, cut_logits) -> Dict[str, torch.Tensor]:
        """Training losses of the configured stage (see the class docstring)."""
        losses = self.head_losses(batched_inputs, sem_seg_logits, cut_logits)
        if not self.fully_differentiable:
            return losses

        grid = tuple(sem_seg_logits.shape[-2:])
        pixel_weights = self._stage2_pixel_weights(batched_inputs, grid)
        edge_weights = self._edge_maps(batched_inputs, "affinity_weights", cut_logits)
        semantic_costs, edge_costs = self.calibration(sem_seg_logits, list(cut_logits))
        semantic_costs = self.pixel_dropout(semantic_costs)
        if self.edge_dropout is not None:
            edge_costs = self.edge_dropout(edge_costs)

        gt_masks = [_pad_or_crop(x["gt_masks"].to(self.device), grid, False) for x in batched_inputs]
        gt_classes = [x["gt_classes"].to(self.device).long() for x in batched_inputs]
        weights = list(pixel_weights.unbind(0))
        # One empty mask per ground-truth segment that the matching leaves unmatched (authors'
        # ComputeBestGroundTruth); the surrogate reuses the padding's matching.
        padding = self.pq_surrogate.padding(gt_masks, gt_classes, weights) if self.pad_unmatched_gt else None

        # The previous call's timing dict holds its backward times by now (the layer starts a
        # new dict per call); logged below as the previous iteration's backward.
        previous_timing = self.amwc_layer.last_timing
        start = time.perf_counter()
        try:
            solutions = self.amwc_layer(
                semantic_costs, edge_costs, pixel_weights=pixel_weights, edge_weights=edge_weights,
                pad_fn=padding,
            )
        except NonFiniteError as err:
            # Costs the model computed itself are non-finite only when training diverged.
            raise self._diverged(f"AMWC layer input {err}") from err
        amwc_time = time.perf_counter() - start

        surrogate = self.pq_surrogate(
            [s.masks for s in solutions], [s.mask_classes.to(self.device) for s in solutions],
            gt_masks, gt_classes, weights, padding=padding,
        )
        losses["loss_pq"] = self.pq_loss_weight * surrogate.loss
        if not bool(torch.isfinite(losses["loss_pq"].detach())):
            raise self._diverged(f"loss_pq (PQ surrogate loss) is {float(losses['loss_pq'])}")

        self._log_train_stats(batched_inputs, solutions, surrogate, amwc_time, previous_timing)
        return losses

    def _stage2_pixel_weights(self, batched_inputs, grid: Tuple[int, int]) -> torch.Tensor:
        """``[B, h, w]`` pixel weights of the PQ surrogate and the AMWC layer's node gradient: the
        mapper's ``pixel_weights`` (0 on void and crowd) plus ``crowd_weight`` on crowd pixels
        (authors: ``panoptic_weights`` = 1 on crowd, 0 on void)."""
        weights = self._stack([x["pixel_weights"] for x in batched_inputs], grid, 0.0).float()
        if self.crowd_weight == 0:
            return weights
        for b, x in enumerate(batched_inputs):
            crowd_ids = x["crowd_ids"].to(self.device)
            if crowd_ids.numel() == 0:
                continue
            ids = _pad_or_crop(x["panoptic_ids"].to(self.device), grid, -1)
            crowd = torch.isin(ids, crowd_ids)
            weights[b][crowd] = self.crowd_weight
        return weights

    @staticmethod
    def _iteration() -> Optional[int]:
        try:
            return int(get_event_storage().iter)
        except AssertionError:  # outside a Detectron2 trainer
            return None

    def _diverged(self, what: str) -> FloatingPointError:
        """The error that stops the fully differentiable stage on NaN / inf: names the tensor
        (``what``), the iteration and the calibration scalars."""
        it = self._iteration()
        calib = {k: round(v, 6) for k, v in self._calibration_scalars().items()}
        return FloatingPointError(
            f"COPS fully differentiable stage diverged{'' if it is None else f' at iteration {it}'}: "
            f"{what}. Calibration scalars: {calib}. "
            "Lower SOLVER.BASE_LR or MODEL.COPS.PQ_LOSS_WEIGHT, or resume from an earlier checkpoint."
        )

    # ------------------------------------------------------------------ logging
    def _calibration_scalars(self) -> Dict[str, float]:
        """The calibration parameters as ``calib_<name>[_<index>]`` -> value."""
        scalars = {}
        for name, param in self.calibration.named_parameters():
            flat = param.detach().reshape(-1).tolist()
            for j, v in enumerate(flat):
                scalars[f"calib_{name.replace('.', '_')}" + (f"_{j}" if len(flat) > 1 else "")] = float(v)
        return scalars

    def _solution_panoptic(self, solution, grid_size: Tuple[int, int], divisor: int) -> np.ndarray:
        """Panoptic id map on the grid of one AMWC solution (``class * divisor + k``; stuff has
        ``k = 0``, thing clusters ``k = 1, 2, ...``); segments under the grid area limits -> -1."""
        labels = solution.node_labels.detach().cpu().numpy().astype(np.int64)
        clusters = solution.instance_ids.detach().cpu().numpy().astype(np.int64)
        hc, wc = grid_size
        labels, clusters = labels[:hc, :wc], clusters[:hc, :wc]
        is_thing = np.isin(labels, self.thing_ids)
        pan = labels * divisor
        if is_thing.any():
            _, inverse = np.unique(clusters[is_thing], return_inverse=True)
            pan[is_thing] += inverse.reshape(-1) + 1
        grid_pixels = float(self.common_stride) ** 2
        ids, counts = np.unique(pan, return_counts=True)
        limits = np.where(np.isin(ids // divisor, self.thing_ids), self.instance_area, self.stuff_area) / grid_pixels
        small = ids[counts < limits]
        if small.size:
            pan = np.where(np.isin(pan, small), -1, pan)
        return pan

    def _train_pq(self, batched_inputs, solutions) -> Dict[str, float]:
        """Exact PQ (percent) of the batch's AMWC solutions on the grid against ``panoptic_ids``
        (segments under the grid area limits are void, crowd handled by ``crowd_ids``)."""
        preds, gts, crowds = [], [], []
        max_clusters = max(int(s.instance_ids.max()) + 2 if s.instance_ids.numel() else 1 for s in solutions)
        divisor = max(self.label_divisor, max_clusters)
        for x, s in zip(batched_inputs, solutions):
            gt = x["panoptic_ids"].cpu().numpy().astype(np.int64)
            hc, wc = gt.shape
            grid = (min(hc, s.node_labels.shape[0]), min(wc, s.node_labels.shape[1]))
            gt = gt[: grid[0], : grid[1]]
            # re-encode the ground truth with the (possibly larger) divisor of the prediction
            gt = np.where(gt >= 0, (gt // self.label_divisor) * divisor + gt % self.label_divisor, -1)
            crowd = [int(c // self.label_divisor) * divisor + int(c % self.label_divisor) for c in x["crowd_ids"].tolist()]
            preds.append(self._solution_panoptic(s, grid, divisor))
            gts.append(gt)
            crowds.append(crowd)
        pq = panoptic_quality(preds, gts, label_divisor=divisor, thing_classes=self.thing_ids, gt_crowd_ids=crowds)
        parts = (("", "All"), ("_th", "Things"), ("_st", "Stuff"))
        return {f"train_pq{suffix}": 100.0 * pq[part]["pq"] for suffix, part in parts}

    def _log_train_stats(self, batched_inputs, solutions, surrogate, amwc_time, previous_timing) -> None:
        """Stage-2 statistics (see the class docstring) into the ``EventStorage`` every iteration
        and the log every ``log_period`` iterations. ``previous_timing``: the layer's
        ``last_timing`` of the previous iteration, whose backward (N perturbed MWC solves per
        image) has run since."""
        stats = {"train_pq_surrogate": 100.0 * float(surrogate.pq.detach())}
        if self.log_train_pq:
            stats.update(self._train_pq(batched_inputs, solutions))
        stats["amwc_time"] = float(amwc_time)
        stats["amwc_solver_time"] = self.amwc_layer.last_timing["forward_solver_s"]
        backward_solver_time = previous_timing["backward_solver_s"]
        if backward_solver_time > 0:
            stats["amwc_backward_solver_time_prev"] = backward_solver_time
            stats["amwc_backward_time_prev"] = backward_solver_time + previous_timing["backward_other_s"]
        stats["num_padded_gt"] = float(sum(s.num_padded for s in solutions))
        stats.update(self._calibration_scalars())
        self.last_train_stats = stats
        it = self._iteration()
        if it is None:  # called outside a Detectron2 trainer (no EventStorage)
            return
        storage = get_event_storage()
        for k, v in stats.items():
            storage.put_scalar(k, v)
        if it % self.log_period == 0:
            shown = ", ".join(
                f"{k}: {v:.4g}" for k, v in stats.items() if k.startswith(("train_pq", "calib_", "num_padded"))
            )
            logger.info(f"COPS stage 2 iter {it}: {shown}")
