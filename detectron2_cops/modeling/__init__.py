"""Modeling side of COPS (needs Detectron2): the ``COPS`` meta-architecture, its semantic and
affinity heads, the AMWC post-processor, and the registries the heads / post-processors are
found through. Importing this package registers ``COPS`` in ``META_ARCH_REGISTRY``,
``COPSSemSegHead`` in ``SEM_SEG_HEADS_REGISTRY``, ``AffinityHead`` in
``AFFINITY_HEAD_REGISTRY`` and ``AMWCPostProcessor`` in ``POST_PROCESSOR_REGISTRY``."""

from .affinity_head import AFFINITY_HEAD_REGISTRY, AffinityHead, build_affinity_head
from .meta_arch import COPS, freeze_parameters
from .post_processing import POST_PROCESSOR_REGISTRY, AMWCPostProcessor, build_post_processor, cops_dataset_metadata
from .sem_seg_head import COPSSemSegHead

__all__ = [
    "AFFINITY_HEAD_REGISTRY", "POST_PROCESSOR_REGISTRY", "AffinityHead", "AMWCPostProcessor", "COPS",
    "COPSSemSegHead", "build_affinity_head", "build_post_processor", "cops_dataset_metadata",
    "freeze_parameters",
]
