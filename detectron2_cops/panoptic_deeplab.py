"""Detectron2's Panoptic-DeepLab (Cheng et al., CVPR 2020), the paper's baseline, in the same
training and evaluation harness as COPS.

The model, heads, dataset mapper and post-processing are Detectron2's own
(``detectron2.projects.panoptic_deeplab``), unchanged. Its dataset mapper imports ``rgb2id``
from ``panopticapi``, which is on no package registry; where ``panopticapi`` is not installed,
:func:`import_panoptic_deeplab` registers the project's :func:`~detectron2_cops.data.panoptic_utils.rgb2id`
(the same formula, ``R + 256 G + 256^2 B``) as ``panopticapi.utils.rgb2id`` before the import.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from detectron2_cops.data.panoptic_utils import rgb2id

META_ARCHITECTURE = "PanopticDeepLab"


def import_panoptic_deeplab() -> types.ModuleType:
    """``detectron2.projects.panoptic_deeplab``, importable without ``panopticapi``.

    Returns:
        the module (``add_panoptic_deeplab_config``, ``PanopticDeeplabDatasetMapper``, and the
        registered ``PanopticDeepLab`` meta-architecture and heads).
    """
    if "panopticapi.utils" not in sys.modules and importlib.util.find_spec("panopticapi") is None:
        package = types.ModuleType("panopticapi")
        utils = types.ModuleType("panopticapi.utils")
        utils.rgb2id = rgb2id
        package.utils = utils
        sys.modules["panopticapi"] = package
        sys.modules["panopticapi.utils"] = utils
    return importlib.import_module("detectron2.projects.panoptic_deeplab")


def add_panoptic_deeplab_config(cfg) -> None:
    """Add Panoptic-DeepLab's config keys to ``cfg`` in place, keeping the values of keys that
    ``cfg`` already has (so the COPS defaults of shared keys such as
    ``MODEL.SEM_SEG_HEAD.LOSS_TOP_K`` stay as they are for COPS configs)."""
    from detectron2.config import get_cfg

    extra = get_cfg()
    import_panoptic_deeplab().add_panoptic_deeplab_config(extra)
    _add_missing(extra, cfg)


def _add_missing(extra, cfg) -> None:
    """Copy into ``cfg`` the keys of ``extra`` (both ``CfgNode``) that ``cfg`` lacks."""
    for key, value in extra.items():
        if key not in cfg:
            cfg[key] = value
        elif isinstance(value, type(extra)) and isinstance(cfg[key], type(extra)):
            _add_missing(value, cfg[key])
