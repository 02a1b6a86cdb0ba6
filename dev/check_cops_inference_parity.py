#!/usr/bin/env python
"""End-to-end inference parity of this project's COPS model with the authors' code.

Needs the authors' code (github aabbas90/COPS, the ``affinityNet`` folder; not part of this
repository), Detectron2, PIL and matplotlib (their eval forward imports them); a manual check,
not a test. ``dev/check_cops_parity.py`` shows that the two *networks* agree bit for bit through
the converter; this check runs the two *models* end to end in eval mode, post-processing
included, and compares what they return:

* their ``PanopticAffinity.forward`` (``panoptic_seg_affinity.py``): AMWC on the whole padded
  stride-4 grid (``PanopticAffinityAMWC.forward`` -> ``multicut_solvers.solve_amc``), the
  one-hot segments upsampled by 4 (nearest), cropped and resized by ``utils.interpolate_mask``,
  ``post_processing.get_panoptic_segmentation_multicut_batch`` (area limits as foreground
  probabilities), instances scored with ``losses.MaskScore``;
* our ``COPS`` meta-architecture with ``AMWCPostProcessor`` under the authors' conventions (the
  defaults of ``detectron2_cops/config.py``), ``MODEL.COPS.PREDICT_SEM_SEG_HEAD True``.

Runs (batched input dicts, the same list given to both models):

1. Cityscapes: ``--image`` resized to 1024x2048, output 1024x2048 (their config: no padding);
2. COCO: the two images of ``datasets/coco_panoptic_sample/images`` (640x427, 640x360), padded
   to 640x640 by both models (their ``SIZE_DIVISIBILITY`` 640: the padding is in the solve),
   output = image size;
3. COCO, output rows 1.5x and columns 0.75x the image (640x480 and 540x480): both nearest
   resizes (up and down) and the resize of the semantic logits are exercised, and the output
   still fits their ``MaskScore`` (it zero-pads the *output-size* mask to a multiple of 640 and
   reads it at ``[2::4, 2::4]`` against the 160x160 affinity maps);
4. COCO, output 1.5x the image (640x960, 540x960): their ``MaskScore`` cannot score an
   instance there (the padded mask is 640x1280, its ``[2::4, 2::4]`` 160x320, which does not
   broadcast against the 160x160 affinity maps: a ``RuntimeError``). The check tries it, prints
   the error, and compares this run with their ``predict_instances`` off (panoptic and semantic
   outputs only).

Compared per image: ``panoptic_seg`` canonicalised (theirs: ``class * label_divisor + k``, -1
void; ours: ids 1..n with ``segments_info``, 0 void): same void-ness, same class, and the same
partition (segments matched one to one by identical pixel sets; a pixel differs if it is void
in one only, has another class, or lies in a segment without an identical counterpart);
``sem_seg`` (theirs: the interpolated AMWC node labels, float32 one-hot; ours: uint8 one-hot):
pixels whose argmax differs; ``sem_seg_head`` against their ``orig_sem_seg`` (max |diff|);
instances matched by identical mask and class, the max |diff| of their scores (float32; ours
sums in float64, theirs in float32) and whether the boxes of the matched ones are equal.
``PARITY OK`` (exit status 0) if panoptic_seg, sem_seg and the instance masks / classes are
identical and the scores agree to ``--score-tolerance`` (relative, default 1e-4), and the control
is flagged: the first image's comparison is repeated against their panoptic map with its two
largest thing segments merged, which must give differing pixels.

What is shimmed, and why (their code is imported unchanged; ``dev/check_cops_parity.py``
describes the import-only stand-ins for panopticapi / scikit-image / OpenCV and the dropped
``in_features=`` argument):

* their AMWC solver ``lpmp_mc.raw_solvers.amwc_solver`` (LPMP's Python binding; LPMP is not built
  here) is served by a stand-in module written to the shim folder in place of the import-only
  one: it calls ``detectron2_cops.solvers.solve_amwc(node_costs, edges, edge_costs,
  partitionable, local_search=False)``, our GAEC without local search, and returns what LPMP's
  binding returns (``lpmp_mc/raw_solvers.py`` at LPMP 6ec78c5 and its ``result_mask``):
  ``node_labels`` ``[N, K] uint8`` one-hot (their ``solve_amc`` reads it as
  ``.transpose().reshape(K, H, W)``), ``node_instance_ids`` ``[N] int32`` (LPMP: the union-find
  representative of each node's cluster; ours: cluster ids 0..S-1; ``solve_amc`` only compares
  them for equality), ``edge_labels`` ``[E] uint8`` (1 = cut, in the order of the given edges)
  and ``solver_cost``, a Python float (LPMP's ``evaluate``, a double). An empty ``partitionable``
  makes every class partitionable, as in LPMP's binding. Our GAEC stands for LPMP's GAEC:
  ``docs/solver.md`` names LPMP's GAEC as the solver the authors call, and
  ``docs/benchmarks.md`` ("AMWC solver against LPMP's GAEC") reports that on its i.i.d.
  Cityscapes- and COCO-size instances our GAEC alone reaches LPMP's GAEC objective. Those
  records are objectives: the repository holds no node-by-node comparison (the driver in
  ``dev/lpmp_gaec`` prints the objective only), and this check cannot make one. Both models
  here therefore solve with the same solver, on the instance each builds: the check compares
  everything around the solve (costs, graph, the solver call, segments, areas, resizes,
  scores). If ``lpmp_mc`` is importable, LPMP itself is used instead and the check says so.
  Every call of the stand-in is logged (nodes, classes, edges, clusters, objective) and the
  count printed, so that a reader sees their solves went through it;
* ``np.bool`` (removed in NumPy 1.24, back as an alias of ``np.bool_`` in NumPy 2) is set to
  ``bool`` only where it is missing: their ``get_panoptic_segmentation_multicut_batch`` uses it;
* ``MODEL.SAVE_RESULT_IMAGES`` is False in their model (their default, set explicitly).
  Their prints (an empty line per AMWC call) are silenced.

Random weights: with ``check_cops_parity``'s random initialisation the semantic logits are
nearly constant over the image (the random features vary by a few per cent around their mean)
and every pixel takes one class: one stuff segment, no instance, a vacuous check. So, after
``randomize_``, the semantic predictor (the last 1x1 conv, the same tensor in both models
through the converter) is rescaled from the first image of each run's dataset (one forward of
their backbone and semantic head): its weights so that the deviation of the logits from their
image mean has spatial std 1, its bias so that the image mean of every logit is a random
offset (std 0.5, seeded), and the stuff biases raised by the median over the pixels of (best
thing logit - best stuff logit), so that about half the pixels prefer a thing class. The
cut-logit heads and the calibration keep ``randomize_``'s values. The counts of segments,
instances and voided segments are printed for each image.

Usage (from the repository root)::

    PYTHONPATH=$PWD python dev/check_cops_inference_parity.py --cops-code /path/to/COPS/affinityNet
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_cops_parity as ccp  # noqa: E402

REPO = ccp.REPO
SAMPLE_IMAGES = [
    str(REPO / "datasets" / "coco_panoptic_sample" / "images" / "000000142238.jpg"),
    str(REPO / "datasets" / "coco_panoptic_sample" / "images" / "000000439180.jpg"),
]

# The stand-in for LPMP's Python module lpmp_mc.raw_solvers; {log} is replaced by a file path.
STAND_IN = '''"""Stand-in for LPMP's lpmp_mc.raw_solvers, written by dev/check_cops_inference_parity.py:
amwc_solver is LPMP's signature and return values, solved by detectron2_cops.solvers.solve_amwc
(GAEC, no local search)."""
import json
import os

import numpy as np

from detectron2_cops.solvers import solve_amwc

LOG = {log!r}


def amwc_solver(node_costs, edge_indices, edge_costs, partitionable=None):
    node_costs = np.asarray(node_costs)
    n, k = node_costs.shape
    # LPMP's binding: an empty partitionable array makes every class partitionable.
    part = np.ones(k, dtype=bool)
    if partitionable is not None and len(partitionable) > 0:
        part = np.asarray(partitionable, dtype=bool)
    res = solve_amwc(node_costs, np.asarray(edge_indices), np.asarray(edge_costs), part, local_search=False)
    node_labels = np.zeros((n, k), dtype=np.uint8)  # LPMP's result_mask: [N, K] one-hot
    node_labels[np.arange(n), np.asarray(res.node_labels, dtype=np.int64)] = 1
    instance_ids = np.asarray(res.instance_ids, dtype=np.int32)
    sizes = np.bincount(instance_ids)  # grid pixels per cluster
    cluster_class = np.zeros(len(sizes), dtype=np.int64)
    cluster_class[instance_ids] = res.node_labels
    thing = part[cluster_class]
    stuff_sizes = np.bincount(cluster_class[~thing], weights=sizes[~thing], minlength=k)
    with open(LOG, "a") as f:  # appended from their forked workers too
        f.write(json.dumps({{"pid": os.getpid(), "nodes": int(n), "classes": int(k),
                            "edges": int(len(edge_costs)), "clusters": int(len(sizes)),
                            "thing_clusters": int(thing.sum()), "thing_sizes": sorted(sizes[thing].tolist()),
                            "stuff_sizes": sorted(int(v) for v in stuff_sizes if v > 0),
                            "objective": float(res.objective)}}) + "\\n")
    return node_labels, instance_ids, np.asarray(res.edge_labels, dtype=np.uint8), float(res.objective)


def mwc_solver(*args, **kwargs):
    raise RuntimeError("mwc_solver (training backward) is not part of the inference parity check")
'''


def stand_in_shims(log: Path) -> dict:
    return {
        "lpmp_mc/__init__.py": '"""Stand-in package for LPMP\'s lpmp_mc (inference parity check)."""\n',
        "lpmp_mc/raw_solvers.py": STAND_IN.format(log=str(log)),
    }


def semantic_adjuster(image: torch.Tensor, seed: int, offset_std: float = 0.5):
    """``fn(their_model)`` that rescales the semantic predictor from ``image`` (module docstring)."""
    from detectron2.structures import ImageList

    @torch.no_grad()
    def adjust(model):
        x = (image - model.pixel_mean) / model.pixel_std
        tensor = ImageList.from_tensors([x], model.size_divisibility).tensor
        captured = {}
        predictor = model.sem_seg_head.predictor
        hook = predictor.register_forward_hook(lambda m, inp, out: captured.__setitem__("f", inp[0]))
        try:
            model.sem_seg_head(model.backbone(tensor))
        finally:
            hook.remove()
        f = captured["f"][0].double()  # [C, h, w] input of the 1x1 predictor
        mu = f.mean((1, 2))
        w = predictor.weight[:, :, 0, 0].double()  # [K, C]
        spread = torch.einsum("kc,chw->khw", w, f - mu[:, None, None]).std((1, 2)).mean()
        w = w / spread
        g = torch.Generator().manual_seed(seed)
        bias = -(w @ mu) + offset_std * torch.randn(w.shape[0], generator=g, dtype=torch.float64)
        logits = torch.einsum("kc,chw->khw", w, f) + bias[:, None, None]
        thing = torch.zeros(w.shape[0], dtype=torch.bool)
        thing[list(model.amwc_layer.thing_ids)] = True
        gap = (logits[thing].max(0).values - logits[~thing].max(0).values).median()
        bias[~thing] += gap
        predictor.weight.copy_(w[:, :, None, None].to(predictor.weight.dtype))
        predictor.bias.copy_(bias.to(predictor.bias.dtype))
        adjust.info = f"weights x{1 / float(spread):.4g}, stuff biases +{float(gap):.4g}"

    adjust.info = ""
    return adjust


# ------------------------------------------------------------------ comparisons
def compare_panoptic(ours, theirs, label_divisor: int):
    """Returns dict: differing pixels, matched segments, segment counts (see module docstring)."""
    o_ids, o_info = ours
    o = o_ids.cpu().numpy().astype(np.int64)
    t = theirs.cpu().numpy().astype(np.int64)
    if o.shape != t.shape:
        raise AssertionError(f"panoptic_seg shapes differ: {o.shape} vs {t.shape}")
    o_void, t_void = o == 0, t < 0
    lut = np.full(int(o.max()) + 1, -1, dtype=np.int64)
    for s in o_info:
        lut[s["id"]] = s["category_id"]
    o_cls = np.where(o_void, -1, lut[o])
    t_cls = np.where(t_void, -1, t // label_divisor)
    o_u, o_idx = np.unique(o.reshape(-1), return_inverse=True)
    t_u, t_idx = np.unique(t.reshape(-1), return_inverse=True)
    pairs, first = np.unique(o_idx.astype(np.int64) * len(t_u) + t_idx, return_index=True)
    po, pt = pairs // len(t_u), pairs % len(t_u)
    o_deg = np.bincount(po, minlength=len(o_u))
    t_deg = np.bincount(pt, minlength=len(t_u))
    flat_o_cls, flat_t_cls = o_cls.reshape(-1), t_cls.reshape(-1)
    match = (o_deg[po] == 1) & (t_deg[pt] == 1) & (o_u[po] != 0) & (t_u[pt] >= 0)
    match &= flat_o_cls[first] == flat_t_cls[first]
    o_matched = np.zeros(len(o_u), dtype=bool)
    t_matched = np.zeros(len(t_u), dtype=bool)
    o_matched[po[match]] = True
    t_matched[pt[match]] = True
    both = ~o_void & ~t_void
    differs = (o_void != t_void) | (
        both & ((o_cls != t_cls) | ~o_matched[o_idx].reshape(o.shape) | ~t_matched[t_idx].reshape(t.shape))
    )
    return {
        "pixels": int(differs.sum()),
        "matched": int(match.sum()),
        "ours": int((o_u != 0).sum()),
        "theirs": int((t_u >= 0).sum()),
        "ours_things": sum(1 for s in o_info if s["isthing"]),
        "void_ours": float(o_void.mean()),
        "void_theirs": float(t_void.mean()),
        "void_differs": int((o_void != t_void).sum()),
        "class_differs": int((both & (o_cls != t_cls)).sum()),
    }


def merged_control(theirs_map: torch.Tensor, label_divisor: int, thing_ids) -> torch.Tensor:
    """Their panoptic map with its two largest thing segments merged (a control the comparison
    must flag), or None if it has fewer than two."""
    t = theirs_map.cpu().numpy().astype(np.int64)
    labels, counts = np.unique(t[t >= 0], return_counts=True)
    things = [(c, l) for l, c in zip(labels.tolist(), counts.tolist()) if l // label_divisor in thing_ids]
    if len(things) < 2:
        return None
    (_, a), (_, b) = sorted(things, reverse=True)[:2]
    return torch.from_numpy(np.where(t == b, a, t))


def _mask_key(mask: torch.Tensor) -> str:
    return hashlib.sha1(np.packbits(mask.cpu().numpy().astype(bool)).tobytes()).hexdigest()


def compare_instances(ours, theirs):
    """Instances matched by identical mask and class; score and box differences of the matched."""
    n_o = 0 if ours is None else len(ours)
    n_t = 0 if theirs is None else len(theirs)
    res = {"ours": n_o, "theirs": n_t, "matched": 0, "score_abs": 0.0, "score_rel": 0.0, "boxes_equal": True}
    if not n_o or not n_t:
        return res
    t_index = {}
    for j in range(n_t):
        t_index[(_mask_key(theirs.pred_masks[j]), int(theirs.pred_classes[j]))] = j
    o_boxes, t_boxes = ours.pred_boxes.tensor, theirs.pred_boxes.tensor
    for i in range(n_o):
        j = t_index.get((_mask_key(ours.pred_masks[i]), int(ours.pred_classes[i])))
        if j is None:
            continue
        res["matched"] += 1
        a, b = float(ours.scores[i]), float(theirs.scores[j])
        d = abs(a - b)
        res["score_abs"] = max(res["score_abs"], d)
        res["score_rel"] = max(res["score_rel"], d / max(abs(a), abs(b), 1e-30))
        res["boxes_equal"] &= bool(torch.equal(o_boxes[i].float().cpu(), t_boxes[j].float().cpu()))
    return res


# ------------------------------------------------------------------ runs
def run_models(theirs, ours, inputs, their_instances=True):
    """Both models' outputs on the same input dicts, and their times."""
    theirs.predict_instances = their_instances
    t0 = time.perf_counter()
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        t_out = theirs(inputs)
    t1 = time.perf_counter()
    with torch.no_grad():
        o_out = ours(inputs)
    t2 = time.perf_counter()
    return t_out, o_out, t1 - t0, t2 - t1


def compare_run(name, images, inputs, t_out, o_out, label_divisor, tol, instances=True):
    rows, ok = [], True
    for path, x, t, o in zip(images, inputs, t_out, o_out):
        pan = compare_panoptic(o["panoptic_seg"], t["panoptic_seg"][0], label_divisor)
        t_sem, o_sem = t["sem_seg"], o["sem_seg"]
        sem_px = int((t_sem.argmax(0) != o_sem.argmax(0)).sum())
        sem_onehot = bool(torch.equal(o_sem.float(), t_sem.float()))
        head = (o["sem_seg_head"].double() - t["orig_sem_seg"].double()).abs().max().item()
        ins = compare_instances(o.get("instances"), t.get("instances")) if instances else None
        row = {
            "run": name, "image": Path(path).stem.lstrip("0"), "out": f"{x['height']}x{x['width']}",
            "pan": pan, "sem_px": sem_px, "sem_onehot": sem_onehot, "head": head, "ins": ins,
        }
        good = pan["pixels"] == 0 and pan["matched"] == pan["ours"] == pan["theirs"] and sem_px == 0 and sem_onehot
        if ins is not None:
            good &= ins["matched"] == ins["ours"] == ins["theirs"] and ins["score_rel"] <= tol and ins["boxes_equal"]
        row["ok"] = good
        ok &= good
        rows.append(row)
    return rows, ok


def print_table(rows):
    head = (f"{'run':<13}{'image':>7}{'output':>11}{'pan px diff':>12}{'segments matched (ours, theirs)':>33}"
            f"{'things':>7}{'sem px diff':>12}{'|d| sem_seg_head':>17}{'instances matched (ours, theirs)':>34}"
            f"{'max |d score|':>14}{'max rel':>10}{'boxes eq':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        p, i = r["pan"], r["ins"]
        seg = f"{p['matched']}/{p['ours']}, {p['matched']}/{p['theirs']}"
        if i is None:
            inst, sa, sr, be = "n/a (theirs cannot)", "-", "-", "-"
        else:
            inst = f"{i['matched']}/{i['ours']}, {i['matched']}/{i['theirs']}"
            sa, sr, be = f"{i['score_abs']:.2e}", f"{i['score_rel']:.1e}", "yes" if i["boxes_equal"] else "NO"
        print(f"{r['run']:<13}{r['image']:>7}{r['out']:>11}{p['pixels']:>12}{seg:>33}{p['ours_things']:>7}"
              f"{r['sem_px']:>12}{r['head']:>17.2e}{inst:>34}{sa:>14}{sr:>10}{be:>9}")


def describe_failures(rows):
    for r in rows:
        if r["ok"]:
            continue
        p, i = r["pan"], r["ins"]
        print(f"  {r['run']} {r['image']} ({r['out']}): panoptic pixels differing {p['pixels']} (void-ness "
              f"{p['void_differs']}, class {p['class_differs']}); segments matched {p['matched']} of ours "
              f"{p['ours']} / theirs {p['theirs']}; sem_seg argmax pixels {r['sem_px']}, one-hot equal "
              f"{r['sem_onehot']}" + ("" if i is None else
                                      f"; instances matched {i['matched']} of {i['ours']} / {i['theirs']}, "
                                      f"max rel score diff {i['score_rel']:.2e}, boxes equal {i['boxes_equal']}"))


def solver_calls(log: Path) -> list:
    if not log.exists():
        return []
    calls = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    log.unlink()
    return calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cops-code", required=True, help="the authors' affinityNet folder")
    parser.add_argument("--images", nargs=2, default=SAMPLE_IMAGES, help="two RGB images (COCO runs)")
    parser.add_argument("--image", default=SAMPLE_IMAGES[0], help="image for the Cityscapes run (resized to 1024x2048)")
    parser.add_argument("--datasets", nargs="+", default=["Cityscapes", "COCO"], choices=["Cityscapes", "COCO"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-tolerance", type=float, default=1e-4, help="max relative score difference")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    cops_code = Path(args.cops_code).resolve()
    if not (cops_code / "panoptic_affinity" / "panoptic_seg_affinity.py").is_file():
        parser.error(f"{cops_code} is not the authors' affinityNet folder (no panoptic_affinity/)")
    torch.set_num_threads(max(1, args.threads))
    if not hasattr(np, "bool"):  # NumPy 1.24-1.26; their post_processing.py uses dtype=np.bool
        np.bool = bool
    start = time.perf_counter()
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "amwc_calls.jsonl"
        pa, _, shims = ccp.import_their_code(cops_code, Path(tmp) / "shims", stand_in_shims(log))
        import lpmp_mc.raw_solvers as lpmp

        stand_in = "lpmp_mc" in shims
        print(f"their code: {cops_code}; stand-ins used for: {', '.join(shims) or 'none'}")
        print("their AMWC solver: " + ("stand-in (detectron2_cops.solvers.solve_amwc, GAEC, no local search)"
                                       if stand_in else f"LPMP, {lpmp.__file__}"))
        for dataset in args.datasets:
            if dataset == "Cityscapes":
                runs = [("Cityscapes", [args.image], [(1024, 2048)], lambda h, w: (h, w))]
            else:
                runs = [
                    ("COCO", args.images, [None, None], lambda h, w: (h, w)),
                    ("COCO resized", args.images, [None, None], lambda h, w: (int(h * 1.5), int(w * 0.75))),
                    ("COCO 1.5x", args.images, [None, None], lambda h, w: (int(h * 1.5), int(w * 1.5))),
                ]
            first = ccp.read_image(runs[0][1][0], dataset, runs[0][2][0])
            adjust = semantic_adjuster(first, args.seed)
            t0 = time.perf_counter()
            tcfg, theirs, ocfg, ours, _ = ccp.build_models(
                dataset, pa, cops_code, args.seed, tmp, their_opts=["MODEL.SAVE_RESULT_IMAGES", False],
                our_opts=["MODEL.COPS.PREDICT_SEM_SEG_HEAD", True, "MODEL.COPS.NUM_THREADS", 1], adjust=adjust,
            )
            label_divisor = theirs.meta.label_divisor
            their_things = sorted(int(v) for v in theirs.meta.thing_dataset_id_to_contiguous_id.values())
            assert their_things == ours.post_processor.thing_ids, (their_things, ours.post_processor.thing_ids)
            print(f"\n== {dataset}: models built in {time.perf_counter() - t0:.0f} s; semantic predictor "
                  f"rescaled ({adjust.info}); thing classes {len(their_things)}, label_divisor {label_divisor}; "
                  f"their SIZE_DIVISIBILITY {tcfg.MODEL.SIZE_DIVISIBILITY}")
            for name, paths, sizes, out_size in runs:
                inputs = []
                for path, size in zip(paths, sizes):
                    img = ccp.read_image(path, dataset, size)
                    h, w = img.shape[-2:]
                    oh, ow = out_size(h, w)
                    inputs.append({"image": img, "height": oh, "width": ow, "file_name": path})
                instances = True
                try:
                    t_out, o_out, t_time, o_time = run_models(theirs, ours, inputs)
                except RuntimeError as err:
                    if name != "COCO 1.5x":
                        raise
                    print(f"   {name}: their forward with instances fails: RuntimeError: {str(err).splitlines()[0]}"
                          f" (MaskScore); comparing without their instances")
                    solver_calls(log)
                    instances = False
                    t_out, o_out, t_time, o_time = run_models(theirs, ours, inputs, their_instances=False)
                calls = solver_calls(log)
                r, good = compare_run(name, paths, inputs, t_out, o_out, label_divisor, args.score_tolerance, instances)
                rows += r
                ok &= good
                sizes_txt = ", ".join(f"{x['image'].shape[-2]}x{x['image'].shape[-1]}->{x['height']}x{x['width']}" for x in inputs)
                print(f"   {name}: images {sizes_txt}; theirs {t_time:.1f} s, ours {o_time:.1f} s"
                      + (f"; their AMWC solves through the stand-in: {len(calls)}" if stand_in else ""))
                cops, cell = ocfg.MODEL.COPS, ocfg.MODEL.AFFINITY_HEAD.COMMON_STRIDE ** 2  # input pixels per grid pixel
                for c in calls:  # in the order the solves finished (their batch solves in forked workers)
                    ts, ss = np.asarray(c["thing_sizes"]), np.asarray(c["stuff_sizes"])
                    small = int((ts < cops.MIN_THING_CLUSTER_SIZE).sum())
                    under = int(((ts >= cops.MIN_THING_CLUSTER_SIZE) & (ts * cell < cops.INSTANCE_AREA)).sum())
                    print(f"      solve: {c['nodes']} nodes, {c['classes']} classes, {c['edges']} edges -> "
                          f"{c['clusters']} clusters: {c['thing_clusters']} thing ({small} under "
                          f"{cops.MIN_THING_CLUSTER_SIZE} grid pixels, {under} more under INSTANCE_AREA), "
                          f"stuff in {len(ss)} classes ({int((ss * cell < cops.STUFF_AREA).sum())} under STUFF_AREA)")
                if name == runs[0][0]:  # control: the comparison must see a merge of two segments
                    merged = merged_control(t_out[0]["panoptic_seg"][0], label_divisor, their_things)
                    if merged is None:
                        print("   control: fewer than two thing segments, skipped")
                    else:
                        px = compare_panoptic(o_out[0]["panoptic_seg"], merged, label_divisor)["pixels"]
                        print(f"   control (must be > 0): their two largest thing segments merged -> {px} pixels differ")
                        ok &= px > 0
                for x in r:
                    p = x["pan"]
                    print(f"      {x['image']}: ours {p['ours']} segments ({p['ours_things']} things), theirs "
                          f"{p['theirs']}; void pixels ours {p['void_ours']:.3%}, theirs {p['void_theirs']:.3%}")
            del theirs, ours
    print()
    print_table(rows)
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")
    if ok:
        print("\nPARITY OK")
        return 0
    print(f"\nPARITY FAILED (score tolerance {args.score_tolerance}):")
    describe_failures(rows)
    return 1


if __name__ == "__main__":
    sys.exit(main())
