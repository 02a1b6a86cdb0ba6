"""Dataset mapper of COPS: reads an image and its panoptic PNG, augments both, builds targets.

Modelled on Detectron2's ``DatasetMapper`` and Panoptic-DeepLab's
``PanopticDeeplabDatasetMapper`` (``projects/Panoptic-DeepLab``): ``@configurable``
constructor, ``from_config(cls, cfg, is_train=True)``, augmentations from the config, and the
panoptic PNG transformed together with the image as a "semantic segmentation"
(``T.AugInput(image, sem_seg=...)``, nearest-neighbour resizing). The targets come from
:class:`~detectron2_cops.data.target_generator.COPSTargetGenerator`.
"""

from __future__ import annotations

import copy
import logging
from typing import List, Optional, Union

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .datasets import get_panoptic_metadata
from .panoptic_utils import rgb2id
from .target_generator import COPSTargetGenerator

__all__ = ["COPSDatasetMapper", "build_cops_augmentation"]

logger = logging.getLogger(__name__)


def build_cops_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """Augmentations of COPS: Detectron2's ``build_augmentation`` (``ResizeShortestEdge`` with
    ``INPUT.MIN_SIZE_*``/``MAX_SIZE_*``, ``RandomFlip`` per ``INPUT.RANDOM_FLIP`` in training),
    with ``T.RandomCrop(INPUT.CROP.TYPE, INPUT.CROP.SIZE)`` after the resize in training when
    ``INPUT.CROP.ENABLED`` (the COPS / Panoptic-DeepLab configs use ``TYPE: "absolute"``).
    """
    augs = utils.build_augmentation(cfg, is_train)
    if is_train and cfg.INPUT.CROP.ENABLED:
        augs.insert(1, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    return augs


class COPSDatasetMapper:
    """Map a Detectron2 panoptic dataset dict to the inputs and targets of COPS.

    Training (``is_train=True``): reads ``file_name`` with
    ``detection_utils.read_image(format=INPUT.FORMAT)`` (grayscale files are converted to the
    3-channel format), checks its size against ``height``/``width`` if present, reads
    ``pan_seg_file_name`` (RGB-encoded segment ids), applies the augmentations to both, decodes
    the ids (:func:`~detectron2_cops.data.panoptic_utils.rgb2id`) and adds to the dict:

    * ``image`` ``[C, H, W] uint8`` (``C = 3`` for ``BGR``/``RGB``; ``H, W`` after augmentation);
    * every output of :class:`COPSTargetGenerator`: ``sem_seg`` ``[H, W] int64``,
      ``sem_seg_weights`` ``[H, W] float32``, ``panoptic_ids`` ``[h, w] int64``, ``crowd_ids``
      ``[C] int64``, ``gt_masks`` ``[G, h, w] bool``, ``gt_classes`` ``[G] int64``,
      ``pixel_weights`` ``[h, w] float32``, ``affinity_targets`` / ``affinity_weights`` (lists
      of ``[2, H_d, W_d] float32``), with ``(h, w) = (ceil(H/4), ceil(W/4))`` (stride 4); the
      affinity maps cover the image padded to ``MODEL.COPS.SIZE_DIVISIBILITY`` when that is > 0
      (the original's COCO padding, weighted by ``INPUT.PADDING_AFFINITY_WEIGHT``).

    Inference (``is_train=False``): only reads and resizes the image (``INPUT.MIN_SIZE_TEST``,
    ``MAX_SIZE_TEST``) and sets ``image``; all other keys (``file_name``, ``image_id``,
    ``height``/``width`` of the original image, ``pan_seg_file_name``, ``segments_info``) stay
    for the evaluators, as in Detectron2's ``DatasetMapper``.

    Args:
        is_train: training or inference mode.
        augmentations: Detectron2 augmentations (see :func:`build_cops_augmentation`).
        image_format: ``INPUT.FORMAT`` (e.g. ``"BGR"``).
        target_generator: required when ``is_train``.
    Raises (on call):
        FileNotFoundError, OSError: a missing or unreadable image or PNG (Detectron2's
            ``read_image``; names the file).
        ValueError: naming the panoptic PNG: a PNG whose size differs from the image's, or
            ground truth refused by :class:`COPSTargetGenerator` (a segment with a non-integer
            id, an unknown category, an ``iscrowd`` other than 0/1, an id of the PNG missing
            from ``segments_info``, ...); ``SizeMismatchError`` (a ``ValueError``) from
            ``check_image_size`` (the image against the dict's ``height``/``width``).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        target_generator: Optional[COPSTargetGenerator] = None,
    ):
        if is_train and target_generator is None:
            raise ValueError("target_generator is required when is_train=True")
        self.is_train = bool(is_train)
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.target_generator = target_generator
        mode = "training" if is_train else "inference"
        logger.info(f"[COPSDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        """Arguments from a config with :func:`detectron2_cops.config.add_cops_config` keys.

        In training, the panoptic metadata (thing classes, ``label_divisor``, ``ignore_label``)
        comes from ``DATASETS.TRAIN``; all training datasets must agree on it.

        Raises:
            ValueError: no training dataset, or training datasets with different class layouts.
        """
        ret = {
            "is_train": is_train,
            "augmentations": build_cops_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
        }
        if not is_train:
            return ret
        names = list(cfg.DATASETS.TRAIN)
        if not names:
            raise ValueError("cfg.DATASETS.TRAIN is empty: the training mapper needs a dataset")
        infos = [get_panoptic_metadata(n) for n in names]
        keys = ("thing_ids", "class_ids", "label_divisor", "ignore_label")
        for n, info in zip(names[1:], infos[1:]):
            if any(info[k] != infos[0][k] for k in keys):
                raise ValueError(
                    f"training datasets '{names[0]}' and '{n}' differ in their class layout "
                    f"({', '.join(keys)}); COPS trains one set of classes"
                )
        info = infos[0]
        head = cfg.MODEL.AFFINITY_HEAD
        ret["target_generator"] = COPSTargetGenerator(
            thing_ids=info["thing_ids"],
            class_ids=info["class_ids"],
            ignore_label=info["ignore_label"],
            label_divisor=info["label_divisor"],
            edge_distances=list(head.EDGE_DISTANCES),
            edge_sampling_intervals=list(head.EDGE_SAMPLING_INTERVALS),
            stride=head.COMMON_STRIDE,
            small_instance_area=cfg.INPUT.SMALL_INSTANCE_AREA,
            small_instance_weight=cfg.INPUT.SMALL_INSTANCE_WEIGHT,
            ignore_crowd_in_semantic=cfg.INPUT.IGNORE_CROWD_IN_SEMANTIC,
            ignore_stuff_in_affinities=cfg.INPUT.IGNORE_STUFF_IN_AFFINITIES,
            instance_affinity_weight=cfg.INPUT.INSTANCE_AFFINITY_WEIGHT,
            # The model pads images to MODEL.COPS.SIZE_DIVISIBILITY (-1: the backbone's, which is
            # 0 for the ResNet backbones of COPS); the affinity targets cover the same padding.
            size_divisibility=max(int(cfg.MODEL.COPS.SIZE_DIVISIBILITY), 0),
            padding_affinity_weight=cfg.INPUT.PADDING_AFFINITY_WEIGHT,
        )
        return ret

    def __call__(self, dataset_dict: dict) -> dict:
        """Map one dataset dict (it is deep-copied, not modified). See the class docstring."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        if not self.is_train:
            aug_input = T.AugInput(image)
            self.augmentations(aug_input)
            dataset_dict["image"] = torch.as_tensor(
                np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))
            )
            return dataset_dict

        pan_file = dataset_dict["pan_seg_file_name"]
        pan_rgb = utils.read_image(pan_file, "RGB")
        if pan_rgb.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"panoptic PNG '{pan_file}' has size {pan_rgb.shape[1]}x{pan_rgb.shape[0]} (WxH) "
                f"but image '{dataset_dict['file_name']}' has size "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        # The RGB-encoded PNG is transformed like a segmentation (nearest neighbour), then decoded.
        aug_input = T.AugInput(image, sem_seg=pan_rgb)
        self.augmentations(aug_input)
        image, pan_rgb = aug_input.image, aug_input.sem_seg
        panoptic = rgb2id(pan_rgb)

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        try:
            targets = self.target_generator(panoptic, dataset_dict["segments_info"])
        except ValueError as e:
            raise ValueError(f"panoptic ground truth '{pan_file}': {e}") from e
        dataset_dict.update(targets)
        return dataset_dict
