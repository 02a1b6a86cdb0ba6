#!/usr/bin/env python
"""Convert a checkpoint of the authors' COPS code into one this project loads with MODEL.WEIGHTS.

The authors (Abbas & Swoboda, NeurIPS 2021; github aabbas90/COPS, ``affinityNet/``) released
Detectron2 checkpoints (a ``torch.save`` dict whose ``"model"`` entry is the state dict) of their
``PanopticAffinity`` meta-architecture: Cityscapes R-50 (PQ 62.1) and COCO R-50 (PQ 38.4). Their
network is, parameter for parameter, the one built by ``configs/Cityscapes-PanopticSegmentation/``
and ``configs/COCO-PanopticSegmentation/``; only the names and the calibration differ:

==========================================================  =========================================
theirs                                                      ours
==========================================================  =========================================
``backbone.*``                                              ``backbone.*``
``sem_seg_head.{decoder,head,predictor}.*``                 ``sem_seg_head.{decoder,head,predictor}.*``
``AFF_EMBED_head.decoder.*``                                ``affinity_head.decoder.*``
``AFF_EMBED_head.affinity_head.{0,1}.*``                    ``affinity_head.head.{0,1}.*``
``AFF_EMBED_head.classifiers.{i}.{0,1}.*``                  ``affinity_head.classifiers.{i}.convs.{0,1}.*``
``AFF_EMBED_head.classifiers.{i}.2.{weight,bias}``          ``affinity_head.classifiers.{i}.predictor.*``
``amwc_layer.seg_cost_weights.{0,1}`` ``[1]`` (w0, w1)      ``calibration.semantic_{weight,bias}`` ``[]``
``amwc_layer.edge_costs_weights.{2i,2i+1}`` ``[1]``         ``calibration.edge_{weight,bias}[i]``
==========================================================  =========================================

Calibration: theirs computes ``c = -x * w0 + w1`` (``panoptic_seg_affinity.py`` lines 173 and 178,
after ``utils.ComputeMulticutCosts`` negates the logits; edges use ``|w_2i|``); ours computes
``c = -(a * x + b)`` (``detectron2_cops/layers/calibration.py``), so ``a = w0`` and ``b = -w1``
(likewise per edge distance).

Three tensors of theirs are constants, not network weights, and are checked rather than mapped:
``pixel_mean`` / ``pixel_std`` (ours are ``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``, buffers that
are not saved) and ``amwc_layer.training_per_class_areas`` (an unused parameter holding
``STUFF_AREA`` for stuff and ``INSTANCE_AREA`` for thing classes; ours are ``MODEL.COPS.STUFF_AREA``
/ ``INSTANCE_AREA``). With ``--config-file`` they are compared with the config (a mismatch is an
error) and the converted weights are loaded into the model that config builds with strict checking.

Their frozen BatchNorm layers (Detectron2 of 2021) have no ``num_batches_tracked`` counter, which
the ``FrozenBatchNorm2d`` of current Detectron2 keeps; for every BatchNorm whose four tensors
were mapped and that has no counter, a counter 0 is added (it is never read by a frozen or an
eval-mode BatchNorm) and the number added is printed (``--no-bn-counters`` skips this).

Every other tensor must match one rule; anything unmapped or duplicated (and, with
``--config-file``, anything the model lacks or expects) is an error that lists the keys, as is a
file that is not a readable checkpoint or a tensor with NaN or inf. The output is ``{"model": state_dict, "__author__": ..., "cops_constants": ...}``.

Usage::

    python tools/convert_cops_checkpoint.py model_final.pth cops_cityscapes_R50.pth \\
        --config-file configs/Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml
    python tools/train_net.py --eval-only --config-file \\
        configs/Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml \\
        MODEL.WEIGHTS cops_cityscapes_R50.pth
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["ConversionError", "convert_state_dict", "convert_checkpoint", "load_their_state_dict"]

# (pattern on their key, replacement for our key); the first matching rule wins.
_RENAME_RULES: List[Tuple[re.Pattern, str]] = [
    (re.compile(r"^backbone\.(.+)$"), r"backbone.\1"),
    (re.compile(r"^sem_seg_head\.(decoder\..+)$"), r"sem_seg_head.\1"),
    (re.compile(r"^sem_seg_head\.(head\.[01]\..+)$"), r"sem_seg_head.\1"),
    (re.compile(r"^sem_seg_head\.predictor\.(weight|bias)$"), r"sem_seg_head.predictor.\1"),
    (re.compile(r"^AFF_EMBED_head\.decoder\.(.+)$"), r"affinity_head.decoder.\1"),
    (re.compile(r"^AFF_EMBED_head\.affinity_head\.([01])\.(.+)$"), r"affinity_head.head.\1.\2"),
    (re.compile(r"^AFF_EMBED_head\.classifiers\.(\d+)\.([01])\.(.+)$"), r"affinity_head.classifiers.\1.convs.\2.\3"),
    (re.compile(r"^AFF_EMBED_head\.classifiers\.(\d+)\.2\.(weight|bias)$"), r"affinity_head.classifiers.\1.predictor.\2"),
]
_SEG_CALIB = re.compile(r"^amwc_layer\.seg_cost_weights\.([01])$")
_EDGE_CALIB = re.compile(r"^amwc_layer\.edge_costs_weights\.(\d+)$")
_CONSTANTS = ("pixel_mean", "pixel_std", "amwc_layer.training_per_class_areas")
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


class ConversionError(ValueError):
    """The checkpoint does not have the authors' COPS layout; the message lists the keys."""


def _fmt(keys, limit: int = 40) -> str:
    keys = sorted(keys)
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return "\n  " + "\n  ".join(keys[:limit]) + more


def _scalar(name: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.numel() != 1 or t.dim() > 1:
        shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ConversionError(f"'{name}' must be a scalar of shape [1] (their calibration), got {shape}")
    if not torch.isfinite(t).all():
        raise ConversionError(f"'{name}' is not finite: {t.tolist()}")
    return t.detach().reshape(()).to(torch.float32)


def convert_state_dict(
    theirs: Dict[str, torch.Tensor], add_bn_counters: bool = True
) -> Tuple["OrderedDict[str, torch.Tensor]", dict]:
    """Map the authors' state dict onto this project's names (see the module docstring).

    Args:
        theirs: their ``model`` state dict (name -> tensor).
        add_bn_counters: add ``num_batches_tracked = 0`` to BatchNorms that have none.
    Returns:
        ``(ours, report)``: our state dict, and a dict with ``mapped`` (number of their tensors
        mapped one to one), ``calibration`` (their calibration tensors consumed),
        ``constants`` (name -> tensor, checked not mapped), ``bn_counters_added`` and
        ``num_edge_distances``.
    Raises:
        ConversionError: unmapped keys, missing calibration scalars, a calibration tensor that is
            not a finite ``[1]`` scalar, an edge calibration count that is odd or does not match
            the number of per-distance classifiers, two keys mapped to one name, non-tensors,
            floating-point tensors with NaN or inf.
    """
    if not isinstance(theirs, dict) or not theirs:
        raise ConversionError("the checkpoint's model state dict is empty or not a dict")
    bad = [k for k, v in theirs.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"entries that are not tensors:{_fmt(bad)}")
    bad = [k for k, v in theirs.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a corrupt or diverged checkpoint: its network would output NaN
        raise ConversionError(f"tensors that are not finite (NaN or inf):{_fmt(bad)}")
    ours: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    source: Dict[str, str] = {}
    seg: Dict[int, torch.Tensor] = {}
    edge: Dict[int, torch.Tensor] = {}
    constants: Dict[str, torch.Tensor] = {}
    unmapped: List[str] = []
    mapped = 0
    for key, value in theirs.items():
        if key in _CONSTANTS:
            constants[key] = value.detach()
            continue
        m = _SEG_CALIB.match(key)
        if m:
            seg[int(m.group(1))] = _scalar(key, value)
            continue
        m = _EDGE_CALIB.match(key)
        if m:
            edge[int(m.group(1))] = _scalar(key, value)
            continue
        for pattern, repl in _RENAME_RULES:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                if new in ours:
                    raise ConversionError(f"'{key}' and '{source[new]}' both map to '{new}'")
                ours[new] = value.detach()
                source[new] = key
                mapped += 1
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(
            f"{len(unmapped)} tensor(s) of the checkpoint match no rule of the COPS layout "
            f"(is it a checkpoint of the authors' PanopticAffinity?):{_fmt(unmapped)}"
        )
    missing = [f"amwc_layer.seg_cost_weights.{i}" for i in (0, 1) if i not in seg]
    num_classifiers = len({int(k.split(".")[2]) for k in ours if k.startswith("affinity_head.classifiers.")})
    if len(edge) % 2 or sorted(edge) != list(range(len(edge))):
        raise ConversionError(
            "amwc_layer.edge_costs_weights must be numbered 0 .. 2D-1 (a weight and an offset per "
            f"edge distance), got indices {sorted(edge)}"
        )
    D = len(edge) // 2
    if D != num_classifiers:
        missing += [f"amwc_layer.edge_costs_weights.{i}" for i in range(2 * D, 2 * num_classifiers)]
        if D > num_classifiers:
            raise ConversionError(
                f"{D} edge calibrations but {num_classifiers} affinity classifiers "
                "(AFF_EMBED_head.classifiers.*): one of each per edge distance expected"
            )
    if missing:
        raise ConversionError(f"the checkpoint lacks calibration tensors:{_fmt(missing)}")
    ours["calibration.semantic_weight"] = seg[0]
    ours["calibration.semantic_bias"] = -seg[1]  # theirs: -x * w0 + w1; ours: -(a x + b)
    ours["calibration.edge_weight"] = torch.stack([edge[2 * i] for i in range(D)]) if D else torch.zeros(0)
    ours["calibration.edge_bias"] = -torch.stack([edge[2 * i + 1] for i in range(D)]) if D else torch.zeros(0)

    added = 0
    if add_bn_counters:
        prefixes = {k[: -len("running_var")] for k in ours if k.endswith(".running_var")}
        for p in sorted(prefixes):
            if all(p + t in ours for t in _BN_TENSORS) and p + "num_batches_tracked" not in ours:
                ours[p + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
                added += 1
    report = {
        "mapped": mapped,
        "calibration": len(seg) + len(edge),
        "constants": constants,
        "bn_counters_added": added,
        "num_edge_distances": D,
        "num_input_tensors": len(theirs),
    }
    return ours, report


def load_their_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Read a Detectron2 checkpoint (``{"model": state_dict, ...}``) or a plain state dict.

    Returns ``(state_dict, other_keys)``; ``other_keys`` (optimizer, scheduler, iteration ...)
    are not converted. Raises ``ConversionError`` if the file cannot be read as a checkpoint or
    holds no state dict of tensors."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except Exception as e:  # torch.load's errors of a corrupt / non-checkpoint file vary
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(ckpt, dict) and "model" in ckpt:
        return ckpt["model"], [k for k in ckpt if k != "model"]
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, []
    raise ConversionError(f"{path}: neither a Detectron2 checkpoint with key 'model' nor a state dict")


def check_against_config(ours: Dict[str, torch.Tensor], report: dict, cfg) -> List[str]:
    """Load ``ours`` into the model ``cfg`` builds (CPU) with strict checking and compare the
    constants with the config. Returns human-readable lines; raises ``ConversionError`` on any
    missing / unexpected key, shape mismatch or constant that differs from the config."""
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    import detectron2_cops  # noqa: F401  (registers the COPS meta-architecture)

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {list(ours[k].shape)} vs model {list(expected[k].shape)}"
        for k in set(ours) & set(expected)
        if ours[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) of the model are not in the checkpoint:{_fmt(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) of the checkpoint are not in the model:{_fmt(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es):{_fmt(wrong)}")
    c = report["constants"]
    for key, value in (("pixel_mean", cfg.MODEL.PIXEL_MEAN), ("pixel_std", cfg.MODEL.PIXEL_STD)):
        if key in c and not torch.allclose(c[key].flatten().float(), torch.tensor(value, dtype=torch.float32)):
            problems.append(
                f"their {key} {c[key].flatten().tolist()} differs from MODEL.{key.upper()} {list(value)}"
            )
    areas = c.get("amwc_layer.training_per_class_areas")
    if areas is not None:
        names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
        meta = MetadataCatalog.get(names[0]) if names else None
        things = set(getattr(meta, "thing_dataset_id_to_contiguous_id", {}).values()) if meta else set()
        if areas.numel() != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
            problems.append(
                f"their per-class areas have {areas.numel()} entries, MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                f"is {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}"
            )
        elif things:
            want = torch.tensor(
                [cfg.MODEL.COPS.INSTANCE_AREA if i in things else cfg.MODEL.COPS.STUFF_AREA for i in range(areas.numel())],
                dtype=torch.float32,
            )
            if not torch.equal(areas.float(), want):
                problems.append(
                    f"their per-class areas {sorted(set(areas.tolist()))} differ from "
                    f"MODEL.COPS.STUFF_AREA {cfg.MODEL.COPS.STUFF_AREA} / INSTANCE_AREA "
                    f"{cfg.MODEL.COPS.INSTANCE_AREA}"
                )
    if problems:
        raise ConversionError("the converted weights do not fit the config's model:\n" + "\n".join(problems))
    model.load_state_dict(ours, strict=True)
    return [f"loaded into {cfg.MODEL.META_ARCHITECTURE} from the config with strict checking: "
            f"{len(expected)} of {len(expected)} model tensors set, constants equal the config"]


def convert_checkpoint(src: str, dst: str, cfg=None, add_bn_counters: bool = True) -> dict:
    """Convert file ``src`` to ``dst`` (see the module docstring); returns the report."""
    theirs, other = load_their_state_dict(src)
    ours, report = convert_state_dict(theirs, add_bn_counters=add_bn_counters)
    report["dropped_non_model_entries"] = other
    report["checks"] = check_against_config(ours, report, cfg) if cfg is not None else []
    torch.save(
        {
            "model": ours,
            "__author__": "Abbas & Swoboda (COPS), converted by detectron2-cops tools/convert_cops_checkpoint.py",
            "cops_constants": {k: v.tolist() for k, v in report["constants"].items()},
        },
        dst,
    )
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", help="the authors' checkpoint (.pth, Detectron2 format)")
    parser.add_argument("output", help="converted checkpoint for MODEL.WEIGHTS")
    parser.add_argument(
        "--config-file",
        default="",
        help="a detectron2-cops config (e.g. configs/Cityscapes-PanopticSegmentation/"
        "cops_R_52_fully_differentiable.yaml): build its model and load the result strictly",
    )
    parser.add_argument("--no-bn-counters", action="store_true", help="do not add num_batches_tracked")
    parser.add_argument(
        "opts", nargs="*", default=[],
        help="config overrides KEY VALUE ... (after the file names; need --config-file)",
    )
    # Intermixed: --config-file may come before or after the file names (a REMAINDER positional
    # would swallow a later --config-file as an override and skip the config checks silently).
    args = parser.parse_intermixed_args(argv)
    if args.opts and not args.config_file:
        parser.error(f"config overrides {args.opts} need --config-file")
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    cfg = None
    if args.config_file:
        from detectron2.config import get_cfg

        from detectron2_cops.config import add_cops_config

        cfg = get_cfg()
        add_cops_config(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    try:
        report = convert_checkpoint(args.input, args.output, cfg, add_bn_counters=not args.no_bn_counters)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.input}: {report['num_input_tensors']} tensors: {report['mapped']} mapped one to one, "
        f"{report['calibration']} calibration scalars -> 4 calibration tensors "
        f"({report['num_edge_distances']} edge distances), {len(report['constants'])} constants checked "
        f"({', '.join(sorted(report['constants']))}); {report['bn_counters_added']} BatchNorm "
        "num_batches_tracked counters added"
    )
    if report["dropped_non_model_entries"]:
        print(f"not converted (training state): {', '.join(report['dropped_non_model_entries'])}")
    for line in report["checks"]:
        print(line)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
