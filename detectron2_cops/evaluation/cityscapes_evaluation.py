"""Cityscapes instance-segmentation AP through the public ``cityscapesscripts`` API.

Upstream Detectron2's ``CityscapesInstanceEvaluator`` imports
``deeplearning.projects.cityscapesApi.cityscapesscripts...`` (an internal module path that does
not exist outside Meta) in both ``process`` and ``evaluate``, so it fails with any installed
``cityscapesscripts``. :class:`CityscapesInstanceEvaluator` does the same work with
``cityscapesscripts.helpers.labels`` and
``cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling`` (cityscapesscripts 2.x):
it writes one ``<image>_pred.txt`` per image listing one binary mask PNG per instance with its
Cityscapes label id and score, and runs the official AP computation (AP over IoU thresholds
0.5:0.05:0.95 and AP50, averaged over the 8 Cityscapes instance classes; Cordts et al. 2016).
"""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import logging
import os
import tempfile
import types
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from detectron2_cops.data.datasets import cityscapes_gt_file

from .panoptic_evaluation import png_size

__all__ = ["CityscapesInstanceEvaluator"]


@contextlib.contextmanager
def _numpy_compat(module):
    """Give ``module`` (a cityscapesscripts module) a NumPy that still has ``np.in1d``.

    cityscapesscripts 2.x calls ``np.in1d``, which NumPy 2.4 removed. Only the module's own
    ``np`` name is replaced, for the duration of the block, by a view of NumPy that adds
    ``in1d`` (as ``np.isin(...).ravel()``, its documented equivalent); NumPy itself is untouched.
    """
    real = getattr(module, "np", None)
    if real is None or hasattr(real, "in1d"):
        yield
        return
    compat = types.ModuleType("numpy_in1d_compat")
    compat.__dict__.update(real.__dict__)
    compat.in1d = lambda ar1, ar2, assume_unique=False, invert=False: np.isin(
        ar1, ar2, assume_unique=assume_unique, invert=invert
    ).ravel()
    module.np = compat
    try:
        yield
    finally:
        module.np = real


class CityscapesInstanceEvaluator(DatasetEvaluator):
    """Cityscapes instance AP (``{"segm": {"AP", "AP50"}}`` in percent) with cityscapesscripts.

    Metadata needed: ``gt_dir`` (folder with ``<city>/*_gtFine_instanceIds.png``, set by
    Detectron2's Cityscapes registrations) and ``thing_classes`` indexed by the contiguous class
    ids of ``pred_classes`` (Cityscapes names, mapped to label ids with
    ``cityscapesscripts.helpers.labels.name2label``).

    ``process`` takes ``inputs[i]`` (``file_name`` of a Cityscapes frame
    ``<city>_<seq>_<frame>_leftImg8bit.png``) and ``outputs[i]["instances"]``: an
    ``Instances`` with ``pred_classes [N]`` integer in ``[0, len(thing_classes))``,
    ``scores [N]`` finite and ``pred_masks [N, H, W]`` bool (or 0/1) tensors, ``(H, W)`` the
    size of the frame's ground truth ``<gt_dir>/<city>/..._gtFine_instanceIds.png`` (the
    original image size); an output without ``instances`` writes an empty prediction file
    (Cityscapes needs one per image).

    Notes (as Detectron2's): does not work across several machines; contains a synchronisation
    and must be called on all ranks; only the main process evaluates.

    Args:
        dataset_name: a registered Cityscapes dataset.
    Raises:
        ValueError: (constructor) a thing class name that is not a Cityscapes label;
            (``process``, naming the image) masks that are not binary ``[N, H, W]`` of the
            ground truth's size, classes that are not integers in ``[0, len(thing_classes))``
            or scores that are not finite; (``evaluate``) no ground-truth
            ``*_gtFine_instanceIds.png`` under ``gt_dir``.
        FileNotFoundError: (``process``) the frame has no ground truth under ``gt_dir``.
        RuntimeError: (``evaluate``) cityscapesscripts rejects the files (e.g. no prediction
            file for a ground-truth image); carries its message.
    """

    def __init__(self, dataset_name: str):
        from cityscapesscripts.helpers.labels import name2label

        self._metadata = MetadataCatalog.get(dataset_name)
        unknown = [n for n in self._metadata.thing_classes if n not in name2label]
        if unknown:
            raise ValueError(
                f"thing classes {unknown} of dataset '{dataset_name}' are not Cityscapes labels"
            )
        self._label_ids = [name2label[n].id for n in self._metadata.thing_classes]
        self._dataset_name = dataset_name
        self._logger = logging.getLogger(__name__)
        self._working_dir = None

    def reset(self):
        if self._working_dir is not None:
            self._working_dir.cleanup()
        self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        self._temp_dir = self._working_dir.name
        if comm.get_local_size() != comm.get_world_size():
            raise RuntimeError("CityscapesInstanceEvaluator does not work with multiple machines")
        # all workers write into the main process's directory
        self._temp_dir = comm.all_gather(self._temp_dir)[0]
        if self._temp_dir != self._working_dir.name:
            self._working_dir.cleanup()
        self._logger.info(f"Writing cityscapes results to temporary directory {self._temp_dir} ...")

    @property
    def prediction_dir(self) -> str:
        """Folder of the prediction files of the current evaluation round."""
        return self._temp_dir

    def _check_instances(self, instances, file_name: str) -> None:
        """Raise ValueError unless ``instances`` are valid predictions for the frame."""
        n = len(instances)
        if n == 0:
            return
        gt_file = cityscapes_gt_file(self._metadata.gt_dir, file_name)
        size = [n, *png_size(gt_file)]
        classes, scores, masks = instances.pred_classes, instances.scores, instances.pred_masks
        problems = []
        if list(masks.shape) != size:
            problems.append(
                f"pred_masks must have shape [N, H, W] = {size} (the size of '{gt_file}'), got "
                f"{list(masks.shape)}"
            )
        elif masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
            problems.append(f"pred_masks must be binary (bool, or 0/1), got {masks.dtype}")
        num = len(self._label_ids)
        if classes.is_floating_point() or classes.dtype == torch.bool or classes.shape != (n,):
            problems.append(f"pred_classes must be [N] integers, got {classes.dtype}")
        elif ((classes < 0) | (classes >= num)).any():
            problems.append(f"pred_classes must lie in [0, {num}), got {classes[:20].tolist()}")
        if scores.shape != (n,) or not bool(torch.isfinite(scores).all()):
            problems.append(f"scores must be [N] finite, got {scores[:20].tolist()}")
        if problems:
            raise ValueError(f"instances of image '{file_name}': " + "; ".join(problems))

    def process(self, inputs, outputs):
        """Write one ``<image>_pred.txt`` and one mask PNG per instance (see the class
        docstring).

        Raises:
            ValueError, FileNotFoundError: see the class docstring; names the image.
        """
        for input, output in zip(inputs, outputs):
            basename = os.path.splitext(os.path.basename(input["file_name"]))[0]
            lines = []
            if "instances" in output:
                instances = output["instances"].to("cpu")
                self._check_instances(instances, input["file_name"])
                for i in range(len(instances)):
                    pred_class = int(instances.pred_classes[i])
                    class_name = self._metadata.thing_classes[pred_class]
                    mask = instances.pred_masks[i].numpy().astype(np.uint8)
                    png_filename = f"{basename}_{i}_{class_name}.png"
                    Image.fromarray(mask * 255).save(os.path.join(self._temp_dir, png_filename))
                    score = float(instances.scores[i])
                    lines.append(f"{png_filename} {self._label_ids[pred_class]} {score}\n")
            with open(os.path.join(self._temp_dir, basename + "_pred.txt"), "w") as fout:
                fout.writelines(lines)

    def evaluate(self):
        """Run cityscapesscripts' instance evaluation on the written predictions.

        Returns:
            ``OrderedDict({"segm": {"AP": ..., "AP50": ...}})`` in percent (main process only).
        Raises:
            ValueError: no ground truth under ``gt_dir``.
            RuntimeError: cityscapesscripts rejects the files (carries its message).
        """
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cityscapes_eval

        self._logger.info(f"Evaluating results under {self._temp_dir} ...")
        # A private copy of the module's global argument object, so that nothing global changes.
        args = copy.copy(cityscapes_eval.args)
        args.predictionPath = os.path.abspath(self._temp_dir)
        args.predictionWalk = None
        args.JSONOutput = False
        args.colorized = False
        args.quiet = True
        args.gtInstancesFile = os.path.join(self._temp_dir, "gtInstances.json")

        gt_dir = PathManager.get_local_path(self._metadata.gt_dir)
        gt_list = sorted(glob.glob(os.path.join(gt_dir, "*", "*_gtFine_instanceIds.png")))
        if not gt_list:
            raise ValueError(
                f"no ground truth '*/*_gtFine_instanceIds.png' under gt_dir '{gt_dir}' of "
                f"dataset '{self._dataset_name}'"
            )
        # The steps of cityscapes_eval.evaluateImgLists, without its side effects (it writes
        # "matches.json" into the current directory and prints).
        # cityscapesscripts reports errors by printing and calling sys.exit: turn them into an
        # exception that carries the message.
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), _numpy_compat(cityscapes_eval):
                pred_list = [cityscapes_eval.getPrediction(gt, args) for gt in gt_list]
                cityscapes_eval.setInstanceLabels(args)
                gt_instances = cityscapes_eval.getGtInstances(gt_list, args)
                matches = cityscapes_eval.matchGtWithPreds(pred_list, gt_list, gt_instances, args)
                ap_scores = cityscapes_eval.evaluateMatches(matches, args)
                averages = cityscapes_eval.computeAverages(ap_scores, args)
        except SystemExit as e:
            raise RuntimeError(
                "cityscapesscripts instance evaluation failed: " + log.getvalue().strip()[-2000:]
            ) from e

        table = "\n".join(
            f"{name:<15} AP {100 * v['ap']:7.3f}  AP50 {100 * v['ap50%']:7.3f}"
            for name, v in averages["classes"].items()
        )
        self._logger.info("Cityscapes instance segmentation results:\n" + table)
        self._working_dir.cleanup()
        self._working_dir = None
        segm = {"AP": 100.0 * float(averages["allAp"]), "AP50": 100.0 * float(averages["allAp50%"])}
        return OrderedDict(segm=segm)
