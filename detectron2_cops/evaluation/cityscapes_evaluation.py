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


def _check_mask_sizes(gt_file: str, pred_txt: str) -> None:
    """Raise ValueError when a mask PNG listed in ``pred_txt`` differs in size from the
    ground-truth PNG ``gt_file`` (cityscapesscripts would broadcast it or fail obscurely)."""
    gt_size = png_size(gt_file)
    folder = os.path.dirname(pred_txt)
    with open(pred_txt) as f:
        names = [ln.split()[0] for ln in f if ln.strip()]
    for name in names:
        size = png_size(os.path.join(folder, name))
        if size != gt_size:
            raise ValueError(
                f"mask '{name}' of '{pred_txt}' has (height, width) {size}, its ground truth "
                f"'{gt_file}' {gt_size}"
            )


class CityscapesInstanceEvaluator(DatasetEvaluator):
    """Cityscapes instance AP (``{"segm": {"AP", "AP50"}}`` in percent) with cityscapesscripts.

    Metadata needed: ``gt_dir`` (folder with ``<city>/*_gtFine_instanceIds.png``, set by
    Detectron2's Cityscapes registrations) and ``thing_classes`` indexed by the contiguous class
    ids of ``pred_classes`` (Cityscapes names, mapped to label ids with
    ``cityscapesscripts.helpers.labels.name2label``).

    ``process`` takes ``inputs[i]`` (``file_name``, optional ``height``/``width``) and
    ``outputs[i]["instances"]`` (an ``Instances`` with ``pred_classes [N]`` integer in
    ``[0, len(thing_classes))``, ``scores [N]`` finite, ``pred_masks [N, H, W]`` bool (or 0/1
    integer/float) tensors, at the original image size: ``(H, W)`` is the input's
    ``(height, width)`` when given, else the ``Instances``' ``image_size``; ``evaluate`` also
    checks the masks against the ground-truth PNG size); an output without ``instances``
    writes an empty prediction file (Cityscapes needs one per image).

    Notes (as Detectron2's): does not work across several machines; contains a synchronisation
    and must be called on all ranks; only the main process evaluates.

    Args:
        dataset_name: a registered Cityscapes dataset.
    Raises:
        ValueError: (``process``, naming the image) a class name that is not a Cityscapes
            label; missing fields, a field that is not a tensor or whose length differs from
            the number of instances; masks that are not ``[N, H, W]`` of the expected size or
            not binary; classes that are not integers in ``[0, len(thing_classes))``;
            non-finite scores. (``evaluate``) no ground-truth ``*_gtFine_instanceIds.png``
            under ``gt_dir``; a mask PNG whose size differs from its ground truth.
        RuntimeError: (``evaluate``) cityscapesscripts rejects the files (e.g. no prediction
            file for a ground-truth image); carries its message.
    """

    def __init__(self, dataset_name: str):
        self._metadata = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._cpu_device = torch.device("cpu")
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

    def _check_instances(self, instances, input: dict, context: str) -> None:
        """Raise ValueError unless ``instances`` holds valid predictions for ``input``."""
        n = len(instances)
        if n == 0:
            return
        for key in ("pred_classes", "scores", "pred_masks"):
            if not instances.has(key):
                raise ValueError(f"{context}: instances have no '{key}'")
            v = instances.get(key)
            if not isinstance(v, torch.Tensor):
                raise ValueError(
                    f"{context}: instances.{key} must be a torch.Tensor, got {type(v).__name__}"
                )
        classes, scores, masks = instances.pred_classes, instances.scores, instances.pred_masks
        if "height" in input and "width" in input:
            size, what = (int(input["height"]), int(input["width"])), "the input's (height, width)"
        else:
            size, what = tuple(int(x) for x in instances.image_size), "the instances' image_size"
        if masks.dim() != 3 or tuple(masks.shape) != (n, *size):
            raise ValueError(
                f"{context}: instances.pred_masks must have shape [N, H, W] = {[n, *size]} "
                f"(N instances, {what}), got {list(masks.shape)}"
            )
        if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError(
                f"{context}: instances.pred_masks must be binary (bool, or 0/1), got dtype "
                f"{masks.dtype} with other values"
            )
        if classes.dim() != 1 or classes.dtype == torch.bool or classes.is_floating_point() \
                or classes.is_complex():
            raise ValueError(
                f"{context}: instances.pred_classes must be an [N] integer tensor, got shape "
                f"{list(classes.shape)} and dtype {classes.dtype}"
            )
        num = len(self._metadata.thing_classes)
        bad = classes[(classes < 0) | (classes >= num)]
        if bad.numel():
            raise ValueError(
                f"{context}: instances.pred_classes must lie in [0, {num}) (thing_classes of "
                f"dataset '{self._dataset_name}'), got {bad[:10].tolist()}"
            )
        if scores.dim() != 1 or scores.dtype == torch.bool or scores.is_complex():
            raise ValueError(
                f"{context}: instances.scores must be an [N] real tensor, got shape "
                f"{list(scores.shape)} and dtype {scores.dtype}"
            )
        if not bool(torch.isfinite(scores).all()):
            bad = torch.nonzero(~torch.isfinite(scores)).flatten()[:10].tolist()
            raise ValueError(f"{context}: instances.scores must be finite, not at indices {bad}")

    def process(self, inputs, outputs):
        """Write one ``<image>_pred.txt`` and one mask PNG per instance (see the class
        docstring).

        Raises:
            ValueError: invalid instances (see the class docstring); names the image.
        """
        from cityscapesscripts.helpers.labels import name2label

        for input, output in zip(inputs, outputs):
            if "file_name" not in input:
                raise ValueError(f"an input has no 'file_name' (keys: {sorted(input)})")
            context = f"image '{input['file_name']}'"
            basename = os.path.splitext(os.path.basename(input["file_name"]))[0]
            pred_txt = os.path.join(self._temp_dir, basename + "_pred.txt")
            lines = []
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                self._check_instances(instances, input, context)
                for i in range(len(instances)):
                    pred_class = int(instances.pred_classes[i])
                    class_name = self._metadata.thing_classes[pred_class]
                    if class_name not in name2label:
                        raise ValueError(
                            f"class {pred_class} ('{class_name}') of dataset "
                            f"'{self._dataset_name}' is not a Cityscapes label name"
                        )
                    class_id = name2label[class_name].id
                    score = float(instances.scores[i])
                    mask = instances.pred_masks[i].numpy().astype(np.uint8)
                    png_filename = f"{basename}_{i}_{class_name}.png"
                    Image.fromarray(mask * 255).save(os.path.join(self._temp_dir, png_filename))
                    lines.append(f"{png_filename} {class_id} {score}\n")
            with open(pred_txt, "w") as fout:
                fout.writelines(lines)

    def evaluate(self):
        """Run cityscapesscripts' instance evaluation on the written predictions.

        Returns:
            ``OrderedDict({"segm": {"AP": ..., "AP50": ...}})`` in percent (main process only).
        Raises:
            ValueError: no ground truth under ``gt_dir``; a mask PNG whose size differs from
                its ground-truth PNG (names both files).
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
                for gt, pred in zip(gt_list, pred_list):
                    _check_mask_sizes(gt, pred)
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
        ret = OrderedDict()
        ret["segm"] = {
            "AP": 100.0 * float(averages["allAp"]),
            "AP50": 100.0 * float(averages["allAp50%"]),
        }
        self._working_dir.cleanup()
        self._working_dir = None
        return ret
