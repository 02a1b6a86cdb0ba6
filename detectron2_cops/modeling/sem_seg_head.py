"""The semantic head of COPS: a DeepLabV3+ decoder with Panoptic-DeepLab's extra head convs.

COPS (Abbas & Swoboda, NeurIPS 2021, Sec. 4 "Architecture") uses Panoptic-DeepLab's semantic
branch (Cheng et al., CVPR 2020): a DeepLabV3+ decoder (ASPP on the coarsest feature, then
low-level feature projections fused top-down), an extra head and a 1x1 predictor. Unlike
Panoptic-DeepLab, the logits are returned at the decoder stride (``common_stride``, 4), because
the asymmetric multiway cut is solved on that grid; they are upsampled only inside the loss.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, DepthwiseSeparableConv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.deeplab import DeepLabV3PlusHead
from detectron2.projects.deeplab.loss import DeepLabCE

from ..checks import as_choice, as_float, as_int

__all__ = ["COPSSemSegHead", "deeplab_head_config"]

_LOSS_TYPES = ("cross_entropy", "hard_pixel_mining")


def deeplab_head_config(cfg, input_shape: Dict[str, ShapeSpec], key: str) -> dict:
    """The constructor arguments both COPS heads read from ``cfg.MODEL.<key>`` (``key``:
    ``"SEM_SEG_HEAD"`` or ``"AFFINITY_HEAD"``; ``input_shape``: the backbone's output name ->
    ``ShapeSpec``), checked: the DeepLabV3+ decoder keys as Detectron2's
    ``DeepLabV3PlusHead.from_config`` reads them (ASPP runs on the coarsest ``IN_FEATURES`` entry,
    so ``PROJECT_FEATURES`` are all others, with one ``PROJECT_CHANNELS`` entry each; the ASPP
    pooling window is the ``INPUT.CROP`` when enabled), ``HEAD_CHANNELS``, ``LOSS_WEIGHT``,
    ``LOSS_TOP_K``.

    Raises:
        ValueError: naming the key: features the backbone lacks or other than described;
            ``COMMON_STRIDE`` or ``HEAD_CHANNELS`` not a positive integer, ``LOSS_WEIGHT`` not a
            finite number >= 0, ``LOSS_TOP_K`` not in ``(0, 1]``; an enabled ``INPUT.CROP`` not
            of ``TYPE`` ``"absolute"`` with a ``SIZE`` of two positive integers.
    """
    head, prefix = cfg.MODEL[key], f"MODEL.{key}"
    in_features = list(head.IN_FEATURES)
    if not in_features or any(f not in input_shape for f in in_features):
        raise ValueError(
            f"{prefix}.IN_FEATURES must name features the backbone produces ({sorted(input_shape)}), "
            f"got {in_features}"
        )
    by_stride = sorted(in_features, key=lambda f: input_shape[f].stride)
    if sorted(head.PROJECT_FEATURES) != sorted(by_stride[:-1]) or len(head.PROJECT_CHANNELS) != len(by_stride) - 1:
        raise ValueError(
            f"{prefix}.PROJECT_FEATURES must be all IN_FEATURES except the coarsest one "
            f"({by_stride[-1]!r}, which goes through ASPP), i.e. {by_stride[:-1]}, with one "
            f"PROJECT_CHANNELS entry each; got {list(head.PROJECT_FEATURES)} and {list(head.PROJECT_CHANNELS)}"
        )
    train_size = None
    if cfg.INPUT.CROP.ENABLED:
        if cfg.INPUT.CROP.TYPE != "absolute" or len(cfg.INPUT.CROP.SIZE) != 2:
            raise ValueError(
                "with INPUT.CROP.ENABLED, INPUT.CROP.TYPE must be 'absolute' and INPUT.CROP.SIZE "
                "(height, width) in pixels (the ASPP pooling window is derived from the crop), got "
                f"{cfg.INPUT.CROP.TYPE!r} and {list(cfg.INPUT.CROP.SIZE)}"
            )
        train_size = tuple(as_int(v, "INPUT.CROP.SIZE", 1) for v in cfg.INPUT.CROP.SIZE)
    loss_top_k = as_float(head.LOSS_TOP_K, f"{prefix}.LOSS_TOP_K", positive=True)
    if loss_top_k > 1:
        raise ValueError(f"{prefix}.LOSS_TOP_K must be in (0, 1], got {loss_top_k}")
    return dict(
        input_shape={f: input_shape[f] for f in in_features},
        project_channels=list(head.PROJECT_CHANNELS),
        aspp_dilations=list(head.ASPP_DILATIONS),
        aspp_dropout=head.ASPP_DROPOUT,
        decoder_channels=[head.CONVS_DIM] * (len(in_features) - 1) + [head.ASPP_CHANNELS],
        common_stride=as_int(head.COMMON_STRIDE, f"{prefix}.COMMON_STRIDE", 1),
        norm=head.NORM,
        train_size=train_size,
        use_depthwise_separable_conv=head.USE_DEPTHWISE_SEPARABLE_CONV,
        head_channels=as_int(head.HEAD_CHANNELS, f"{prefix}.HEAD_CHANNELS", 1),
        loss_weight=as_float(head.LOSS_WEIGHT, f"{prefix}.LOSS_WEIGHT", 0),
        loss_top_k=loss_top_k,
    )


def conv3x3_head(in_channels: int, mid_channels: int, out_channels: int, norm, groups: int = 1) -> nn.Sequential:
    """Two 3x3 convs with norm and ReLU (``in -> mid -> out`` channels, ``groups`` groups each),
    c2-Xavier initialised: the extra head of Panoptic-DeepLab's heads, used by the semantic and
    the affinity head, and the body of the affinity head's per-distance classifiers."""
    use_bias = norm == ""
    head = nn.Sequential(
        Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, groups=groups, bias=use_bias,
               norm=get_norm(norm, mid_channels), activation=F.relu),
        Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, groups=groups, bias=use_bias,
               norm=get_norm(norm, out_channels), activation=F.relu),
    )
    weight_init.c2_xavier_fill(head[0])
    weight_init.c2_xavier_fill(head[1])
    return head


@SEM_SEG_HEADS_REGISTRY.register()
class COPSSemSegHead(DeepLabV3PlusHead):
    """Semantic segmentation head of COPS (Panoptic-DeepLab's semantic branch, stride-4 output).

    Architecture: Detectron2's ``DeepLabV3PlusHead`` in decoder-only mode (ASPP and decoder fuse
    convs depthwise-separable with ``use_depthwise_separable_conv``, as the original COPS
    configs), an extra head to ``head_channels``, a 1x1 predictor to ``num_classes`` logits
    (weights ``N(0, 0.001)``, bias 0). The extra head is by default the authors' one
    (``PanopticAffinitySemSegHead.head`` in their ``panoptic_seg_affinity.py``): two 3x3 conv +
    norm + ReLU, c2-Xavier initialised; module names ``head.0``, ``head.1``, ``predictor`` as
    theirs, so their checkpoints map one to one. With ``head_depthwise_separable_conv`` it is one
    5x5 depthwise-separable conv (Detectron2's ``PanopticDeepLabSemSegHead``; cannot load the
    authors' weights).

    Loss (pretraining stage, COPS Sec. 4): the logits are bilinearly upsampled by
    ``common_stride`` (``align_corners=False``) and scored with

    * ``"hard_pixel_mining"``: Detectron2's ``DeepLabCE`` (DeeperLab, Yang et al. 2019): per-pixel
      cross entropy times the pixel weights, mean over the ``loss_top_k`` fraction of pixels with
      the largest weighted loss;
    * ``"cross_entropy"``: per-pixel cross entropy times the pixel weights, averaged over the
      pixels whose label is not ``ignore_value``;

    and multiplied by ``loss_weight``.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        decoder_channels: List[int],
        norm: Union[str, Callable],
        head_channels: int,
        loss_weight: float,
        loss_type: str,
        loss_top_k: float,
        ignore_value: int,
        num_classes: int,
        head_depthwise_separable_conv: bool = False,
        **kwargs,
    ):
        """
        Args:
            input_shape, decoder_channels, norm, **kwargs: the decoder's arguments, as Detectron2's
                ``DeepLabV3PlusHead`` (``kwargs``: ``project_channels``, ``aspp_dilations``,
                ``aspp_dropout``, ``common_stride``, ``train_size``, ``use_depthwise_separable_conv``).
            head_channels: channels of the extra head conv(s) before the predictor.
            loss_weight: weight of the semantic loss; 0 disables it (``losses`` returns ``{}``).
            loss_type: ``"hard_pixel_mining"`` or ``"cross_entropy"``.
            loss_top_k: fraction in ``(0, 1]`` of hardest pixels kept by ``"hard_pixel_mining"``.
            ignore_value: semantic label that is ignored by the loss (Detectron2: 255).
            num_classes: number of semantic classes K (things and stuff).
            head_depthwise_separable_conv: extra head = one 5x5 depthwise-separable conv
                (Panoptic-DeepLab) instead of the original COPS two 3x3 convs.

        The values are checked where they are read from the config (:meth:`from_config`).
        """
        # num_classes is not passed on: the base class then builds the decoder only.
        super().__init__(
            input_shape, decoder_channels=decoder_channels, norm=norm, ignore_value=ignore_value, **kwargs
        )
        assert self.decoder_only

        self.num_classes = int(num_classes)
        self.loss_weight = float(loss_weight)
        self.loss_type = loss_type
        self.loss_top_k = float(loss_top_k)
        self.head_depthwise_separable_conv = bool(head_depthwise_separable_conv)
        if self.head_depthwise_separable_conv:  # one 5x5 conv: the receptive field of two 3x3 convs
            self.head = DepthwiseSeparableConv2d(
                decoder_channels[0], head_channels, kernel_size=5, padding=2,
                norm1=norm, activation1=F.relu, norm2=norm, activation2=F.relu,
            )
        else:
            self.head = conv3x3_head(decoder_channels[0], decoder_channels[0], head_channels, norm)
        self.predictor = Conv2d(head_channels, self.num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0)

        hard = loss_type == "hard_pixel_mining"  # else the weighted cross entropy of losses()
        self.loss = DeepLabCE(ignore_label=ignore_value, top_k_percent_pixels=self.loss_top_k) if hard else None

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """Read ``MODEL.SEM_SEG_HEAD.*``: the keys of :func:`deeplab_head_config`, ``NUM_CLASSES``,
        ``LOSS_TYPE``, ``IGNORE_VALUE`` and ``HEAD_USE_DEPTHWISE_SEPARABLE_CONV``.

        Raises:
            ValueError: naming the key: as :func:`deeplab_head_config`, ``NUM_CLASSES`` not a
                positive integer, ``LOSS_TYPE`` not one of ``"hard_pixel_mining"``,
                ``"cross_entropy"``.
        """
        head = cfg.MODEL.SEM_SEG_HEAD
        loss_type = as_choice(head.LOSS_TYPE, "MODEL.SEM_SEG_HEAD.LOSS_TYPE", _LOSS_TYPES)
        return dict(
            deeplab_head_config(cfg, input_shape, "SEM_SEG_HEAD"),
            num_classes=as_int(head.NUM_CLASSES, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 1),
            loss_type=loss_type,
            ignore_value=head.IGNORE_VALUE,
            head_depthwise_separable_conv=head.HEAD_USE_DEPTHWISE_SEPARABLE_CONV,
        )

    def forward(self, features: Dict[str, torch.Tensor], targets=None, weights=None) -> Tuple[torch.Tensor, dict]:
        """``(logits, losses)``: :meth:`layers` of the backbone ``features`` (name -> ``[B, C,
        H/stride, W/stride] float32``) and, given ``targets`` (``[B, H, W] int64`` labels at image
        resolution) and optional ``weights`` (``[B, H, W] float32``), :meth:`losses`."""
        logits = self.layers(features)
        if targets is None:
            return logits, {}
        return logits, self.losses(logits, targets, weights)

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoder, head and predictor: ``[B, K, H/common_stride, W/common_stride]`` logits."""
        return self.predictor(self.head(super().layers(features)))

    def losses(self, logits: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor] = None):
        """Semantic loss on the logits upsampled by ``common_stride`` (see the class docstring).

        Args:
            logits: ``[B, K, h, w] float`` logits at the decoder stride.
            targets: ``[B, h * common_stride, w * common_stride] int64`` labels.
            weights: ``[B, h * common_stride, w * common_stride] float`` pixel weights, or None.
        Returns:
            ``{"loss_sem_seg": scalar}``, or ``{}`` when ``loss_weight`` is 0.
        """
        if self.loss_weight == 0.0:
            return {}
        if weights is not None:
            weights = weights.to(logits.dtype)
        upsampled = F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        if self.loss is not None:
            loss = self.loss(upsampled, targets, weights)
        else:
            pixel_losses = F.cross_entropy(upsampled, targets, ignore_index=self.ignore_value, reduction="none")
            if weights is not None:
                pixel_losses = pixel_losses * weights
            num_valid = (targets != self.ignore_value).sum().clamp(min=1)
            loss = pixel_losses.sum() / num_valid
        return {"loss_sem_seg": loss * self.loss_weight}
