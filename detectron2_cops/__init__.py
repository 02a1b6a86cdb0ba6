"""detectron2-cops: COPS (Abbas & Swoboda, "Combinatorial Optimization for Panoptic Segmentation:
A Fully Differentiable Approach", NeurIPS 2021) as a Detectron2 project.

Importing the package registers everything: always :mod:`~detectron2_cops.solvers` (the native
AMWC / MWC solvers; NumPy only) and :mod:`~detectron2_cops.layers` (AMWC layer, cost calibration,
PQ surrogate, exact PQ; PyTorch only); with Detectron2 installed also
:mod:`~detectron2_cops.config` (``add_cops_config``, also exported here),
:mod:`~detectron2_cops.data` (dataset mapper; registers ``coco_panoptic_sample`` under
``$DETECTRON2_DATASETS``), :mod:`~detectron2_cops.evaluation` and
:mod:`~detectron2_cops.modeling` (the ``COPS`` meta-architecture, its heads and post-processor).
Without Detectron2 those attributes raise an ``ImportError`` saying that Detectron2 is required.
"""
import importlib.util

from . import layers, solvers

__version__ = "0.1.0"

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

__all__ = ["__version__", "HAS_DETECTRON2", "layers", "solvers"]

_DETECTRON2_ATTRIBUTES = ("add_cops_config", "config", "data", "evaluation", "modeling")

if HAS_DETECTRON2:
    from . import config, data, evaluation, modeling
    from .config import add_cops_config

    __all__ += ["add_cops_config", "config", "data", "evaluation", "modeling"]
else:

    def __getattr__(name):
        if name in _DETECTRON2_ATTRIBUTES:
            raise ImportError(
                f"detectron2_cops.{name} requires Detectron2, which is not installed; install "
                "Detectron2 (https://detectron2.readthedocs.io/en/latest/tutorials/install.html) "
                "to use the COPS model, data, evaluation and config"
            )
        raise AttributeError(f"module 'detectron2_cops' has no attribute {name!r}")
