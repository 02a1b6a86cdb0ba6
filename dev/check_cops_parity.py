#!/usr/bin/env python
"""Parity of this project's network with the authors' COPS network, through the converter.

Needs the authors' code (github aabbas90/COPS, the ``affinityNet`` folder; not part of this
repository) and Detectron2; it is a manual check, not a test (CI has no copy of their code; the
CI test ``tests/test_convert_checkpoint.py`` checks the converter against their parameter names
and shapes recorded in ``tests/data/cops_original_parameters.json``, which ``--write-fixture``
regenerates).

For each dataset (Cityscapes, COCO) it

1. builds the authors' ``PanopticAffinity`` from their fully differentiable config on the
   installed Detectron2. Their code is imported unchanged; two things are shimmed from here:
   import-only stand-ins (written to a temporary folder) for modules it imports at module level
   but the check never calls (their LPMP solver ``lpmp_mc``, and ``panopticapi``,
   ``skimage``, ``cv2`` if not installed), and the ``in_features=`` argument their affinity head
   passes to ``DeepLabV3PlusHead`` (dropped: current Detectron2 derives it from ``input_shape``);
2. gives it random weights (seeded): the built initialisation for conv weights, random biases,
   BatchNorm affine parameters and running statistics, random calibration scalars (edge weights
   of both signs, as ``|w|`` is used); converts BatchNorm to ``FrozenBatchNorm2d`` as their
   ``train_net.py`` does with ``MODEL.FREEZE_BN`` and drops ``num_batches_tracked`` (their
   released checkpoints have none);
3. saves it as a Detectron2 checkpoint, converts it with ``tools/convert_cops_checkpoint.py``
   (strict load into the model of our config), loads it with ``DetectionCheckpointer`` into the
   model of ``configs/<dataset>-PanopticSegmentation/cops_R_52_fully_differentiable.yaml``;
4. runs both on a real image (resized to the config's training crop for Cityscapes, 512x1024;
   shortest edge 640, padded to 640x640, for COCO) and compares the semantic logits, each
   distance's cut logits and the calibrated costs (theirs: ``ComputeMulticutCosts`` then
   ``amwc_layer``'s calibration lines, transcribed below; ours: ``model.calibration``).

Usage (from the repository root)::

    PYTHONPATH=$PWD python dev/check_cops_parity.py --cops-code /path/to/COPS/affinityNet \\
        --image datasets/coco_panoptic_sample/images/000000142238.jpg
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

_SHIMS = {
    "lpmp_mc/__init__.py": '"""Import-only stand-in: the parity check never solves."""\n',
    "lpmp_mc/raw_solvers.py": (
        "def _unavailable(*a, **k):\n    raise RuntimeError('LPMP solvers are not available in the parity check')\n"
        "amwc_solver = mwc_solver = _unavailable\n"
    ),
    "panopticapi/__init__.py": "",
    "panopticapi/utils.py": (
        "import numpy as np\n"
        "def rgb2id(color):\n    color = np.asarray(color).astype(np.int64)\n"
        "    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]\n"
    ),
    "panopticapi/evaluation.py": (
        "class PQStat:\n    def __getattr__(self, name):\n"
        "        raise RuntimeError('panopticapi is not available in the parity check')\n"
    ),
    "skimage/__init__.py": "",
    "skimage/util/__init__.py": "",
    "skimage/util/shape.py": (
        "def view_as_windows(*a, **k):\n    raise RuntimeError('scikit-image is not available in the parity check')\n"
    ),
    "cv2/__init__.py": (
        "__version__ = '4.0.0-shim'\ndef setNumThreads(n):\n    pass\n"
        "class ocl:\n    @staticmethod\n    def setUseOpenCL(flag):\n        pass\n"
    ),
}


def _install_shims(folder: Path, overrides: dict = None) -> list:
    """Write import-only stand-ins for the modules that are not importable; returns their names.
    ``overrides``: ``{relative path: text}`` replacing entries of ``_SHIMS`` (e.g. a working
    ``lpmp_mc/raw_solvers.py``, as ``check_cops_inference_parity.py`` writes)."""
    texts = dict(_SHIMS)
    texts.update(overrides or {})
    used = []
    for top in ("lpmp_mc", "panopticapi", "skimage", "cv2"):
        try:
            importlib.import_module(top if top != "lpmp_mc" else "lpmp_mc.raw_solvers")
            continue
        except ImportError:
            pass
        for rel, text in texts.items():
            if rel.startswith(top + "/"):
                path = folder / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        used.append(top)
    sys.path.insert(0, str(folder))
    return used


def import_their_code(cops_code: Path, shim_dir: Path, shim_overrides: dict = None):
    shims = _install_shims(shim_dir, shim_overrides)
    sys.path.insert(0, str(cops_code))
    import panoptic_affinity as pa
    from panoptic_affinity import utils as their_utils
    from panoptic_affinity.panoptic_seg_affinity import PanopticAffinityInsEmbedHead

    original = PanopticAffinityInsEmbedHead.from_config.__func__

    def from_config(cls, cfg, input_shape):
        ret = original(cls, cfg, input_shape)
        ret.pop("in_features", None)  # current DeepLabV3PlusHead takes the features from input_shape
        return ret

    PanopticAffinityInsEmbedHead.from_config = classmethod(from_config)
    return pa, their_utils, shims


def their_cfg(pa, cops_code: Path, dataset: str, out_dir: str):
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    pa.add_panoptic_affinity_config(cfg)
    cfg.merge_from_file(str(cops_code / "configs" / f"{dataset}-PanopticSegmentation" / "panoptic_affinity_fully_differentiable.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.OUTPUT_DIR = out_dir
    return cfg


def our_cfg(dataset: str):
    from detectron2.config import get_cfg

    from detectron2_cops.config import add_cops_config

    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / f"{dataset}-PanopticSegmentation" / "cops_R_52_fully_differentiable.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Random biases, BatchNorm parameters and statistics and calibration scalars; conv weights
    keep their (seeded) random initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            leaf = name.rsplit(".", 1)[-1]
            if not t.is_floating_point() or name.startswith(("pixel_", "amwc_layer.")):
                continue
            if ".norm." in name:
                if leaf == "running_var":
                    t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
                elif leaf == "weight":
                    t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
                else:  # bias, running_mean
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif leaf == "bias":
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
        seg = model.amwc_layer.seg_cost_weights
        seg[0].copy_(1.0 + 0.3 * torch.randn(1, generator=g))
        seg[1].copy_(0.5 * torch.randn(1, generator=g))
        edge = model.amwc_layer.edge_costs_weights
        for i in range(len(edge) // 2):  # scales of both signs: theirs uses |w|
            edge[2 * i].copy_((-1.0) ** i * (0.5 + torch.rand(1, generator=g)))
            edge[2 * i + 1].copy_(0.5 * torch.randn(1, generator=g))


def released_layout(model: torch.nn.Module) -> dict:
    """Their FREEZE_BN conversion and the state dict as in their released checkpoints."""
    from detectron2.layers import FrozenBatchNorm2d

    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    return {k: v for k, v in frozen.state_dict().items() if not k.endswith("num_batches_tracked")}


def read_image(path: str, dataset: str, size=None) -> torch.Tensor:
    """``[3, H, W] float`` RGB: resized to ``size`` ``(H, W)`` if given, else to the Cityscapes
    training crop or to longest edge 640 (COCO)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if size is not None:
        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
    elif dataset == "Cityscapes":
        img = img.resize((1024, 512), Image.BILINEAR)  # the training crop (ASPP pooling window)
    else:
        w, h = img.size
        s = 640.0 / max(h, w)
        img = img.resize((int(round(w * s)), int(round(h * s))), Image.BILINEAR)
    return torch.as_tensor(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))).float()


@torch.no_grad()
def their_outputs(model, their_utils, image: torch.Tensor, size_divisibility: int):
    from detectron2.structures import ImageList

    # PanopticAffinity.forward, the lines before the AMWC solver (panoptic_seg_affinity.py 359-397).
    x = (image - model.pixel_mean) / model.pixel_std
    images = ImageList.from_tensors([x], size_divisibility)
    features = model.backbone(images.tensor)
    _, sem = model.sem_seg_head(features)
    _, aff = model.AFF_EMBED_head(features, sem)
    seg_costs, aff_costs = their_utils.ComputeMulticutCosts(sem, aff)
    # PanopticAffinityAMWC.forward lines 173 and 178 (eval mode: no dropout).
    w = model.amwc_layer.seg_cost_weights
    e = model.amwc_layer.edge_costs_weights
    seg_costs = seg_costs * w[0] + w[1]
    aff_costs = [a * torch.abs(e[2 * i]) + e[2 * i + 1] for i, a in enumerate(aff_costs)]
    return images.tensor, sem, list(aff), seg_costs, aff_costs


@torch.no_grad()
def our_outputs(model, image: torch.Tensor):
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    sem = model.sem_seg_head.layers(features)
    cut = model.affinity_head.layers(features, sem)
    sem_costs, edge_costs = model.calibration(sem, list(cut))
    return images.tensor, sem, list(cut), sem_costs, edge_costs


def diff(a: torch.Tensor, b: torch.Tensor):
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {list(a.shape)} vs {list(b.shape)}")
    d = (a.double() - b.double()).abs().max().item()
    scale = a.double().abs().max().item()
    return d, d / max(scale, 1e-30), scale


def build_models(dataset, pa, cops_code, seed, tmp, fixture=None, their_opts=(), our_opts=(), adjust=None):
    """Their ``PanopticAffinity`` with seeded random weights (:func:`randomize_`, then
    :func:`released_layout`) and our model of ``cops_R_52_fully_differentiable.yaml`` loaded from
    its checkpoint converted by ``tools/convert_cops_checkpoint.py``, both in eval mode.
    ``their_opts`` / ``our_opts``: config ``KEY VALUE`` lists merged before building;
    ``adjust``: optional ``fn(their_model)`` run after :func:`randomize_`, before the checkpoint
    is written (so our model gets the adjusted weights through the converter too).

    Returns:
        ``(their cfg, their model, our cfg, our model, the converter's report)``.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import convert_cops_checkpoint as conv
    import detectron2_cops  # noqa: F401

    torch.manual_seed(seed)
    tcfg = their_cfg(pa, cops_code, dataset, os.path.join(tmp, f"their_{dataset}"))
    tcfg.merge_from_list(list(their_opts))
    theirs = build_model(tcfg).eval()
    randomize_(theirs, seed)
    if adjust is not None:
        adjust(theirs)
    sd = released_layout(theirs)
    theirs = theirs.eval()
    if fixture is not None:
        fixture[dataset] = {
            "config": f"affinityNet/configs/{dataset}-PanopticSegmentation/panoptic_affinity_fully_differentiable.yaml",
            "parameters": {k: list(v.shape) for k, v in sd.items()},
        }
    src, dst = os.path.join(tmp, f"{dataset}_theirs.pth"), os.path.join(tmp, f"{dataset}_ours.pth")
    torch.save({"model": sd, "iteration": 0}, src)
    ocfg = our_cfg(dataset)
    ocfg.merge_from_list(list(our_opts))
    report = conv.convert_checkpoint(src, dst, ocfg)
    ours = build_model(ocfg).eval()
    DetectionCheckpointer(ours).load(dst)
    ours.load_state_dict(torch.load(dst, weights_only=False)["model"], strict=True)
    return tcfg, theirs, ocfg, ours, report


def run_dataset(dataset, pa, their_utils, cops_code, image_path, seed, tmp, tol, fixture):
    tcfg, theirs, ocfg, ours, report = build_models(dataset, pa, cops_code, seed, tmp, fixture)
    image = read_image(image_path, dataset)
    t_img, t_sem, t_aff, t_seg_c, t_aff_c = their_outputs(theirs, their_utils, image, tcfg.MODEL.SIZE_DIVISIBILITY)
    o_img, o_sem, o_aff, o_seg_c, o_aff_c = our_outputs(ours, image)
    rows = [("input tensor", *diff(t_img, o_img)), ("semantic logits", *diff(t_sem, o_sem))]
    for d, a, b in zip(ocfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES, t_aff, o_aff):
        rows.append((f"cut logits d={d}", *diff(a, b)))
    rows.append(("semantic costs", *diff(t_seg_c, o_seg_c)))
    for d, a, b in zip(ocfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES, t_aff_c, o_aff_c):
        rows.append((f"edge costs d={d}", *diff(a, b)))
    print(f"\n== {dataset}: image {Path(image_path).name} -> input {list(o_img.shape)}, grid {list(o_sem.shape[2:])}")
    print(
        f"   their tensors: {report['num_input_tensors']}; mapped one to one: {report['mapped']}; "
        f"calibration scalars: {report['calibration']}; constants checked: {len(report['constants'])}; "
        f"num_batches_tracked added: {report['bn_counters_added']}; our model tensors: {len(ours.state_dict())}"
    )
    for line in report["checks"]:
        print("   " + line)
    print(f"   {'output':<22}{'max |abs diff|':>16}{'max rel diff':>14}{'max |value|':>14}")
    ok = True
    for name, d, r, s in rows:
        print(f"   {name:<22}{d:>16.3e}{r:>14.3e}{s:>14.3e}")
        ok &= r <= tol
    # Controls (must differ): the comparison sees a swap of the edge channels (rows / columns)
    # and a calibration offset taken without the sign flip.
    swapped = diff(t_aff[1], o_aff[1].flip(1))[1]
    unflipped = diff(t_seg_c, -(ours.calibration.semantic_weight * o_sem - ours.calibration.semantic_bias))[1]
    print(f"   controls (max rel diff, must be > tolerance): channels swapped {swapped:.3e}, "
          f"calibration offset unflipped {unflipped:.3e}")
    ok &= swapped > tol and unflipped > tol
    return ok


def format_fixture(header: str, fixture: dict) -> str:
    """JSON with one line per parameter (diff-friendly)."""
    parts = [f"{{\n\"about\": {json.dumps(header)},"]
    for i, (dataset, entry) in enumerate(fixture.items()):
        params = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in entry["parameters"].items())
        end = "," if i + 1 < len(fixture) else ""
        parts.append(f"{json.dumps(dataset)}: {{\"config\": {json.dumps(entry['config'])}, \"parameters\": {{\n{params}\n}}}}{end}")
    return "\n".join(parts) + "\n}\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cops-code", required=True, help="the authors' affinityNet folder")
    parser.add_argument("--image", required=True, help="a real RGB image")
    parser.add_argument("--datasets", nargs="+", default=["Cityscapes", "COCO"], choices=["Cityscapes", "COCO"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max relative difference (default 1e-4)")
    parser.add_argument("--write-fixture", default="", help="write their parameter names and shapes (JSON)")
    args = parser.parse_args(argv)
    cops_code = Path(args.cops_code).resolve()
    if not (cops_code / "panoptic_affinity" / "panoptic_seg_affinity.py").is_file():
        parser.error(f"{cops_code} is not the authors' affinityNet folder (no panoptic_affinity/)")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        pa, their_utils, shims = import_their_code(cops_code, Path(tmp) / "shims")
        print(f"their code: {cops_code}; import-only stand-ins used for: {', '.join(shims) or 'none'}")
        fixture = {} if args.write_fixture else None
        ok = all(
            [run_dataset(ds, pa, their_utils, cops_code, args.image, args.seed, tmp, args.tolerance, fixture) for ds in args.datasets]
        )
    if fixture is not None:
        header = (
            "Parameter names and shapes of the authors' COPS network (github aabbas90/COPS, affinityNet, "
            "commit de324db) in the layout of their released checkpoints (FrozenBatchNorm2d, no "
            "num_batches_tracked), read from their model built by dev/check_cops_parity.py --write-fixture."
        )
        Path(args.write_fixture).write_text(format_fixture(header, fixture))
        print(f"wrote {args.write_fixture}")
    print("\nPARITY OK" if ok else f"\nPARITY FAILED (tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
