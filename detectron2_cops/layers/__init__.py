"""COPS layers: the differentiable AMWC layer, cost calibration, the PQ surrogate loss with its
segment matching, and exact panoptic quality. Pure PyTorch / NumPy / SciPy; no Detectron2 import."""
from .amwc_layer import AMWCBatchOutput, AMWCFunction, AMWCLayer, AMWCOutput, NonFiniteError
from .calibration import CostCalibration, EdgeDropout, PixelDropout
from .panoptic_quality import panoptic_quality
from .pq_surrogate import GroundTruthPadding, PanopticQualitySurrogate, SurrogateOutput, match_segments

__all__ = [
    "AMWCBatchOutput",
    "AMWCFunction",
    "AMWCLayer",
    "AMWCOutput",
    "CostCalibration",
    "EdgeDropout",
    "GroundTruthPadding",
    "NonFiniteError",
    "PanopticQualitySurrogate",
    "PixelDropout",
    "SurrogateOutput",
    "match_segments",
    "panoptic_quality",
]
