"""Data side of COPS: panoptic id encoding, target generator, dataset registration, mapper.

``panoptic_utils`` and ``target_generator`` need only NumPy and PyTorch. The Detectron2 parts
(``datasets``, ``dataset_mapper``) are imported when Detectron2 is installed; importing this
package then registers the COCO-panoptic-format folders of
:data:`~detectron2_cops.data.datasets.COCO_PANOPTIC_FOLDERS` (``coco_panoptic_sample``) under
``$DETECTRON2_DATASETS``.
"""

import importlib.util

from .panoptic_utils import MAX_PANOPTIC_ID, id2rgb, rgb2id
from .target_generator import COPSTargetGenerator, grid_sample_coordinates, grid_size

__all__ = [
    "MAX_PANOPTIC_ID",
    "id2rgb",
    "rgb2id",
    "COPSTargetGenerator",
    "grid_sample_coordinates",
    "grid_size",
]

if importlib.util.find_spec("detectron2") is not None:
    from .dataset_mapper import COPSDatasetMapper, build_cops_augmentation
    from .datasets import (
        COCO_PANOPTIC_FOLDERS,
        get_panoptic_metadata,
        load_coco_panoptic_folder,
        load_panoptic_as_instances,
        register_all_coco_panoptic_folders,
        register_coco_panoptic_folder,
        register_panoptic_instances_view,
    )

    __all__ += [
        "COPSDatasetMapper",
        "build_cops_augmentation",
        "COCO_PANOPTIC_FOLDERS",
        "get_panoptic_metadata",
        "load_coco_panoptic_folder",
        "load_panoptic_as_instances",
        "register_all_coco_panoptic_folders",
        "register_coco_panoptic_folder",
        "register_panoptic_instances_view",
    ]

    register_all_coco_panoptic_folders()
