#!/usr/bin/env python
"""Benchmarks of detectron2-cops, one subcommand each; every one prints a table.

* ``solver``: the native AMWC / MWC solvers on seeded Cityscapes- and COCO-size instances
  (optionally side by side with LPMP's GAEC, the solver the authors' code calls);
* ``layer``: the differentiable AMWC layer, forward + backward, split into solver and the rest,
  for the backward variants of ``AMWCLayer`` (cold / warm-started, float64 / float32);
* ``inference``: per image, the network, the AMWC solve inside the post-processor and the rest
  of the post-processing, at Cityscapes (1024x2048) and COCO (640x640) size.

Examples (the figures of the development machine are in docs/benchmarks.md)::

    python tools/benchmark.py solver --seed 0 --repeats 7 [--lpmp /tmp/lpmp_gaec_driver]
    python tools/benchmark.py layer --seed 0 --batch 4 --height 128 --width 256 --repeats 9 \\
        --warmup 1 --variants cold64 cold32 warm64 warm32 [--memory]
    python tools/benchmark.py inference --seed 0 --repeats 2 [--device cuda] [--sem-seg-head]

``python tools/benchmark.py SUBCOMMAND --help`` describes each one.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- shared helpers
def print_table(header, rows, note="", left=(0,)):
    """Print ``rows`` (lists of cells; numbers already formatted) under ``header``; the columns
    in ``left`` are left-aligned, the others right-aligned; ``note`` follows the table."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    print()
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))
    if note:
        print("\n" + note)


def interleaved(fns, repeats, warmup=0):
    """Run each of ``fns`` (name -> callable returning ``(seconds or None, result)``) once per
    repeat, in turn, so that all see the same machine load. Returns name -> (median s, min s,
    last result); ``warmup`` untimed rounds come first."""
    times = {k: [] for k in fns}
    outs = {}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            t, out = fn()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0 if t is None else t)
            outs[k] = out
    return {k: (statistics.median(v), min(v), outs[k]) for k, v in times.items()}


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB: ``VmHWM`` of ``/proc/self/status`` on Linux
    (the peak since its exec; ``ru_maxrss`` also keeps the parent's size at the fork), else
    ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def scaled(length, scale):
    return max(1, int(round(length * scale)))


# ----------------------------------------------------------------------------- solver
SOLVER_CASES = {
    "Cityscapes": dict(height=256, width=512, num_classes=19, num_thing_classes=8, edge_distances=[1, 4, 16, 32, 64]),
    "COCO": dict(height=160, width=160, num_classes=133, num_thing_classes=80, edge_distances=[1, 4, 16, 32]),
}

_SOLVER_MEMORY_CHILD = r"""
import json, resource, sys
import numpy as np
from detectron2_cops.solvers import solve_amwc

def status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")

d = np.load(sys.argv[1])
args = (d["node_costs"], d["edges"], d["edge_costs"], d["partitionable"])
before = status_mb("VmRSS")
try:  # reset the peak-RSS counter (Linux) so that imports and loading do not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
solve_amwc(*args, local_search=True)
peak = status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"before_mb": before, "peak_mb": peak, "reset": reset}))
"""


def _write_lpmp_instance(inst, path):
    """The instance in the format of dev/lpmp_gaec/lpmp_gaec_driver.cpp (float64 costs)."""
    N, K = inst.node_costs.shape
    with open(path, "wb") as f:
        np.array([N, K, inst.edges.shape[0]], dtype="<i8").tofile(f)
        inst.node_costs.astype("<f8").tofile(f)
        inst.edges.astype("<i8").tofile(f)
        inst.edge_costs.astype("<f8").tofile(f)
        inst.partitionable.astype(np.uint8).tofile(f)


def _run_lpmp(driver, path):
    """(seconds in LPMP's GAEC call, its objective) for one run of the driver."""
    out = subprocess.run([driver, path, "1"], check=True, capture_output=True, text=True).stdout.split()
    return float(out[1]), float(out[2])


def _solver_peak_memory(inst):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "instance.npz")
        np.savez(path, node_costs=inst.node_costs, edges=inst.edges, edge_costs=inst.edge_costs,
                 partitionable=inst.partitionable)
        out = subprocess.run([sys.executable, "-c", _SOLVER_MEMORY_CHILD, path], check=True,
                             capture_output=True, text=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    return rec["peak_mb"], rec["peak_mb"] - rec["before_mb"], rec["reset"]


def run_solver(args):
    """Rows per instance and noise: AMWC by GAEC alone, with local search (the default), the
    default with the graph-structure cache cleared before every solve (a first solve on a grid),
    MWC (the same costs without partitionable classes: what the layer's backward solves) and,
    with ``--lpmp``, LPMP's GAEC; then a batch on 1 and 2 threads and the peak memory of one
    Cityscapes-size solve."""
    from detectron2_cops.solvers import clear_graph_structure_cache, solve_amwc, solve_amwc_batch, solve_mwc
    from detectron2_cops.solvers.synthetic import iid_noise_instance, synthetic_instance

    if args.lpmp and not os.access(args.lpmp, os.X_OK):
        raise SystemExit(f"--lpmp {args.lpmp}: not an executable (build it with dev/lpmp_gaec/build.sh)")
    cases = {}
    for name, spec in SOLVER_CASES.items():
        spec = dict(spec, height=scaled(spec["height"], args.scale), width=scaled(spec["width"], args.scale))
        cases[f"{name} {spec['height']}x{spec['width']}"] = spec
    noises = {"correlated": synthetic_instance, "i.i.d.": iid_noise_instance}
    print(f"solver benchmark: seed {args.seed}, {args.repeats} repeats, {os.cpu_count()} CPU cores, one thread "
          f"per solve unless stated" + (f", LPMP driver {args.lpmp}" if args.lpmp else ""))

    def cold(a):
        clear_graph_structure_cache()
        t0 = time.perf_counter()
        r = solve_amwc(*a, local_search=True)
        return time.perf_counter() - t0, r

    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for case, spec in cases.items():
            for noise, make in noises.items():
                inst = make(**spec, seed=args.seed)
                if first is None:
                    first = inst
                a = (inst.node_costs, inst.edges, inst.edge_costs, inst.partitionable)
                solve_amwc(*a)  # warm-up: first touch of the per-thread buffers
                fns = {
                    "gaec": lambda: (None, solve_amwc(*a, local_search=False)),
                    "ls": lambda: (None, solve_amwc(*a, local_search=True)),
                    "ls_cold": lambda: cold(a),
                    "mwc": lambda: (None, solve_mwc(*a[:3], local_search=True)),
                }
                if args.lpmp:
                    path = os.path.join(tmp, "instance.bin")
                    _write_lpmp_instance(inst, path)
                    fns["lpmp"] = lambda path=path: _run_lpmp(args.lpmp, path)
                res = interleaved(fns, args.repeats)
                lp = res["lpmp"][0] if args.lpmp else None
                label = f"{case} {noise}"
                for key, solver in (("gaec", "AMWC GAEC"), ("ls", "AMWC GAEC + local search"),
                                    ("ls_cold", "  same, first solve on the grid"), ("mwc", "MWC GAEC + local search")):
                    t, m, r = res[key]
                    notes = []
                    if lp and key != "mwc":
                        notes.append(f"{lp / t:.2f}x LPMP")
                    if key == "ls":
                        notes.append(f"local search moves: {r.info['local_search_moves']}")
                    if key == "mwc":
                        notes.append(f"{t / res['ls'][0]:.2f}x the AMWC time")
                    rows.append([label, solver, f"{t * 1e3:.1f}", f"{m * 1e3:.1f}", f"{r.objective:.3f}",
                                 int(r.instance_ids.max()) + 1, ", ".join(notes)])
                if args.lpmp:
                    t, m, obj = res["lpmp"]
                    rows.append([label, "LPMP AMWC GAEC", f"{t * 1e3:.1f}", f"{m * 1e3:.1f}", f"{obj:.3f}", "",
                                 f"N={inst.node_costs.shape[0]}, E={inst.edges.shape[0]}, K={inst.node_costs.shape[1]}"])

    if not args.skip_batch:
        case, spec = next(iter(cases.items()))
        batch = [synthetic_instance(**spec, seed=args.seed + b) for b in range(args.batch_size)]
        batch = [(i.node_costs, i.edges, i.edge_costs, i.partitionable) for i in batch]
        solve_amwc_batch(batch, num_threads=2)  # warm-up
        res = interleaved({
            "1": lambda: (None, solve_amwc_batch(batch, num_threads=1)),
            "2": lambda: (None, solve_amwc_batch(batch, num_threads=2)),
        }, args.repeats)
        for k in ("1", "2"):
            t, m, _ = res[k]
            note = f"speed-up over 1 thread: {res['1'][0] / t:.2f}x" if k == "2" else ""
            rows.append([f"{case} correlated", f"batch of {args.batch_size}, {k} thread{'s' if k == '2' else ''}",
                         f"{t * 1e3:.1f}", f"{m * 1e3:.1f}", "", "", note])

    note = ""
    if not args.skip_memory:
        total, extra, reset = _solver_peak_memory(first)
        note = (f"Peak memory of one {next(iter(cases))} solve with local search (fresh process): {extra:.0f} MB "
                f"above the process before the solve (peak RSS {total:.0f} MB, imports included)." if reset else
                f"Peak RSS of a fresh process solving one {next(iter(cases))} instance: {total:.0f} MB (imports "
                "included; this system cannot reset the peak counter).")
    print_table(["instance", "solver", "median ms", "min ms", "objective", "segments", "notes"], rows, note,
                left=(0, 1, 6))
    return 0


# ----------------------------------------------------------------------------- layer
#: variant -> (backward_warm_start, backward_float32)
LAYER_VARIANTS = {"cold64": (False, False), "cold32": (False, True), "warm64": (True, False), "warm32": (True, True)}


def _layer_batch(args):
    """Leaf cost tensors and ground truth (masks, classes) of ``args.batch`` synthetic images."""
    import torch

    from detectron2_cops.solvers.synthetic import synthetic_instance

    insts = [synthetic_instance(args.height, args.width, args.num_classes, args.num_thing_classes,
                                args.edge_distances, seed=args.seed + b) for b in range(args.batch)]
    H, W, K = args.height, args.width, args.num_classes
    sem = np.stack([i.node_costs.reshape(H, W, K).transpose(2, 0, 1) for i in insts])
    semantic_costs = torch.from_numpy(np.ascontiguousarray(sem)).requires_grad_()
    maps = insts[0].grid.edge_values_to_maps(np.stack([i.edge_costs for i in insts]))
    edge_costs = [torch.from_numpy(np.ascontiguousarray(m)).requires_grad_() for m in maps]
    gt_masks, gt_classes = [], []
    for inst in insts:
        masks, classes = [], []
        for c in np.unique(inst.semantic).tolist():
            sel = inst.semantic == c
            ids = np.unique(inst.instance[sel]).tolist() if c < args.num_thing_classes else [None]
            for i in ids:
                masks.append(sel if i is None else sel & (inst.instance == i))
                classes.append(c)
        gt_masks.append(torch.from_numpy(np.stack(masks)))
        gt_classes.append(torch.tensor(classes, dtype=torch.long))
    return semantic_costs, edge_costs, gt_masks, gt_classes


def _layer_and_loss(args, variant):
    from detectron2_cops.layers import AMWCLayer, PanopticQualitySurrogate

    warm, f32 = LAYER_VARIANTS[variant]
    things = list(range(args.num_thing_classes))
    layer = AMWCLayer(args.num_classes, things, args.edge_distances, num_samples=args.num_samples,
                      lambda_min=1.0, lambda_max=5000.0, local_search=not args.no_local_search,
                      num_threads=args.threads, backward_warm_start=warm, backward_float32=f32)
    # Cityscapes area limits (image pixels) on the stride-4 grid.
    loss = PanopticQualitySurrogate(things, stuff_area=2048 / 16, instance_area=200 / 16, ratio_eps=0.1)
    return layer, loss


def _layer_once(layer, loss_fn, semantic_costs, edge_costs, gt_masks, gt_classes, gen):
    semantic_costs.grad = None
    for e in edge_costs:
        e.grad = None
    t0 = time.perf_counter()
    outs = layer(semantic_costs, edge_costs, generator=gen)
    t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss = loss_fn([o.masks for o in outs], [o.mask_classes for o in outs], gt_masks, gt_classes).loss
    t_loss = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss.backward()
    t_bwd = time.perf_counter() - t0
    timing = dict(layer.last_timing)
    return {
        "fwd_solver": timing["forward_solver_s"],
        "fwd": t_fwd,
        "bwd_solver": timing["backward_solver_s"],
        "bwd": timing["backward_solver_s"] + timing["backward_other_s"],
        "loss_fwd": t_loss,
        # the backward through the surrogate itself, outside the layer
        "loss_bwd": t_bwd - timing["backward_solver_s"] - timing["backward_other_s"],
        "segments": sum(int(o.masks.shape[0]) for o in outs),
    }


def _layer_memory_child(args):
    """One forward + backward of variant ``args.memory_child``; prints the peak-RSS growth (JSON)."""
    import torch

    data = _layer_batch(args)
    layer, loss_fn = _layer_and_loss(args, args.memory_child)
    before = peak_rss_kib()
    _layer_once(layer, loss_fn, *data, torch.Generator().manual_seed(args.seed))
    print(json.dumps({"growth_mib": (peak_rss_kib() - before) / 1024}))
    return 0


def run_layer(args):
    """``AMWCLayer`` (COPS Sec. 3.4-3.5: forward AMWC solve, backward with N perturbed multiway
    cuts) on a batch of seeded synthetic instances with the PQ surrogate as the loss. Variants are
    interleaved within every repeat, with the same lambdas. Columns: medians of the layer's
    forward and backward (and the time inside the batched solver call), backward / forward, the
    share of the layer's time outside the solver, the surrogate's own forward and backward (not
    part of the layer's time) and, with ``--memory``, the growth of the peak resident set size of
    one forward + backward in a fresh process (everything allocated: NumPy, PyTorch, the solver)."""
    import torch

    if args.memory_child:
        return _layer_memory_child(args)
    torch.manual_seed(args.seed)
    print(f"layer benchmark: seed {args.seed}, {args.repeats} repeats after {args.warmup} warm-up, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"batch {args.batch} x K={args.num_classes} ({args.num_thing_classes} things) x {args.height}x{args.width} "
          f"grid, edge distances {args.edge_distances}, N={args.num_samples}, solver threads "
          f"{args.threads or 'auto'}, local search {not args.no_local_search}")
    data = _layer_batch(args)
    layers = {v: _layer_and_loss(args, v) for v in args.variants}
    runs = {v: [] for v in args.variants}
    for r in range(args.warmup + args.repeats):
        for v in args.variants:
            gen = torch.Generator().manual_seed(args.seed + 1000 * r)  # the same lambdas for every variant
            out = _layer_once(*layers[v], *data, gen)
            if r >= args.warmup:
                runs[v].append(out)
    memory = {}
    if args.memory:
        for v in args.variants:
            cmd = [sys.executable, __file__, "layer", "--memory-child", v, "--seed", str(args.seed),
                   "--batch", str(args.batch), "--height", str(args.height), "--width", str(args.width),
                   "--num-classes", str(args.num_classes), "--num-thing-classes", str(args.num_thing_classes),
                   "--num-samples", str(args.num_samples), "--threads", str(args.threads),
                   "--edge-distances", *map(str, args.edge_distances)] + (["--no-local-search"] if args.no_local_search else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            memory[v] = json.loads(out.strip().splitlines()[-1])["growth_mib"]
    rows = []
    for v in args.variants:
        med = {k: statistics.median(r[k] for r in runs[v]) for k in runs[v][0]}
        other = med["fwd"] + med["bwd"] - med["fwd_solver"] - med["bwd_solver"]
        row = [v + (" (default)" if v == "warm32" else ""), f"{med['fwd']:.3f}", f"{med['fwd_solver']:.3f}",
               f"{med['bwd']:.3f}", f"{med['bwd_solver']:.3f}", f"{med['bwd'] / med['fwd']:.2f}",
               f"{100 * other / (med['fwd'] + med['bwd']):.1f}", f"{med['loss_fwd']:.3f}", f"{med['loss_bwd']:.3f}",
               int(med["segments"])]
        if memory:
            row.append(f"{memory[v]:.0f}")
        rows.append(row)
    header = ["variant", "forward s", "in solver", "backward s", "in solver", "bwd / fwd", "outside solver %",
              "loss fwd s", "loss bwd s", "segments"] + (["peak memory +MiB"] if memory else [])
    print_table(header, rows, left=(0,), note="cold: every perturbed multiway cut solved by GAEC from scratch; warm: from the forward "
                "solution by local search; 64 / 32: float64 / float32 perturbed costs. cold32 is the authors' "
                "estimator.")
    return 0


# ----------------------------------------------------------------------------- inference
INFERENCE_DATASETS = {
    # config, image size, the authors' per-image time on one GPU (network included)
    "cityscapes": ("configs/Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml", (1024, 2048), 1.8),
    "coco": ("configs/COCO-PanopticSegmentation/cops_R_52_fully_differentiable.yaml", (640, 640), 0.4),
}


def _synthetic_logits(sem_shape, cut_shapes, thing_ids, distances, seed, device):
    """Semantic logits ``[1, K, h, w]`` and cut-logit maps of the network's shapes from a seeded
    synthetic scene (``logits = -node costs``, ``cut logits = -edge costs``), the scene's thing
    classes mapped onto the dataset's thing classes."""
    import torch

    from detectron2_cops.solvers.synthetic import synthetic_instance

    _, K, h, w = sem_shape
    inst = synthetic_instance(h, w, K, len(thing_ids), distances, seed=seed)
    order = list(thing_ids) + [k for k in range(K) if k not in set(thing_ids)]  # model class of scene class j
    sem = np.empty((K, h, w), dtype=np.float32)
    sem[order] = -inst.node_costs.T.reshape(K, h, w)
    cuts = []
    for m, shape in zip(inst.grid.edge_values_to_maps(-inst.edge_costs), cut_shapes):
        assert tuple(shape) == tuple(m.shape), (shape, m.shape)
        cuts.append(torch.from_numpy(np.asarray(m, dtype=np.float32)[None]).to(device))
    return torch.from_numpy(sem[None]).to(device), cuts


def run_inference(args):
    """Per image (a seeded random image of the dataset's evaluation size; the model from the
    project's R-52 config with random weights, so only the times mean something): ``network``
    (``preprocess_image``, backbone, both heads), ``solver`` (the batched AMWC solve inside the
    post-processor) and ``rest`` (everything else the post-processor does: calibration, cost
    arrays, panoptic map, ``sem_seg``, masks, boxes, scores, ``sem_seg_head`` with ``--sem-seg-head``); medians after one
    warm-up. A network with random weights gives noise logits, unlike a trained model's, so the
    post-processor gets the logits of a synthetic scene with CNN-like noise
    (``--post-input synthetic``, the default) of the network's output shapes."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import detectron2_cops  # noqa: F401  (registers the COPS components)
    import detectron2_cops.modeling.post_processing as pp_module
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    clock = time.process_time if args.cpu_time else time.perf_counter
    solver_times = []
    inner = pp_module.solve_amwc_batch

    def timed_solve(*a, **k):  # time the solve inside the post-processor
        t0 = clock()
        out = inner(*a, **k)
        solver_times.append(clock() - t0)
        return out

    pp_module.solve_amwc_batch = timed_solve
    dev = args.device

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    print(f"inference benchmark: seed {args.seed}, {args.repeats} repeats, device {dev}"
          + (f" ({torch.cuda.get_device_name(0)})" if dev.startswith("cuda") else "")
          + f", {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"{'CPU' if args.cpu_time else 'wall'} time, post-processor input {args.post_input}, "
          f"sem_seg_head {'on' if args.sem_seg_head else 'off'}")
    rows = []
    for name in args.datasets:
        config, (H, W), authors_s = INFERENCE_DATASETS[name]
        H, W = scaled(H, args.scale), scaled(W, args.scale)
        cfg = get_cfg()
        detectron2_cops.add_cops_config(cfg)
        cfg.merge_from_file(str(ROOT / config))
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = dev
        if args.sem_seg_head:
            cfg.MODEL.COPS.PREDICT_SEM_SEG_HEAD = True
        torch.manual_seed(args.seed)
        model = build_model(cfg).eval()
        g = torch.Generator().manual_seed(args.seed)
        image = torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8).float()
        batched = [{"image": image, "height": H, "width": W}]

        def network():
            images = model.preprocess_image(batched)
            features = model.backbone(images.tensor)
            sem = model.sem_seg_head.layers(features)
            return images, sem, model.affinity_head.layers(features, sem)

        with torch.no_grad():
            images, sem, cut = network()  # warm-up, and the output shapes
            sync()
            sizes = [tuple(int(v) for v in s) for s in images.image_sizes]
            if args.post_input == "synthetic":
                post = model.post_processor
                sem, cut = _synthetic_logits(tuple(sem.shape), [tuple(c.shape[1:]) for c in cut], post.thing_ids,
                                             post.edge_distances, args.seed, dev)

            def post_process():
                return model.post_processor(sem, cut, sizes, [(H, W)], calibration=model.calibration)

            out = post_process()  # warm-up
            sync()
            net_t, post_t, solve_t = [], [], []
            for _ in range(args.repeats):
                if not args.skip_network:
                    t0 = clock()
                    network()
                    sync()
                    net_t.append(clock() - t0)
                solver_times.clear()
                t0 = clock()
                out = post_process()
                sync()
                post_t.append(clock() - t0)
                solve_t.append(sum(solver_times))
        med = statistics.median
        net = med(net_t) if net_t else float("nan")
        rest = med([p - s for p, s in zip(post_t, solve_t)])
        ratio = med([p / s for p, s in zip(post_t, solve_t)])
        rows.append([name, f"{H}x{W}", "-" if args.skip_network else f"{net * 1e3:.0f}", f"{med(solve_t) * 1e3:.0f}",
                     f"{rest * 1e3:.0f}", f"{ratio:.2f}",
                     "-" if args.skip_network else f"{(net + med(post_t)) * 1e3:.0f}", f"{authors_s:.1f} s",
                     len(out[0]["panoptic_seg"][1])])
        model = None  # freed before the next dataset's model is built
    print_table(["dataset", "image", "network ms", "solver ms", "rest ms", "(solver + rest) / solver", "total ms",
                 "authors (1 GPU)", "segments"], rows,
                "authors: the per-image time the COPS paper reports (one GPU, network included).")
    return 0


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{solver,layer,inference}")

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=inspect.cleandoc(fn.__doc__),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        p.add_argument("--seed", type=int, default=0, help="seed of the synthetic instances, images and weights")
        return p

    p = add("solver", run_solver, "AMWC / MWC solvers on Cityscapes- and COCO-size instances")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per row (median reported)")
    p.add_argument("--scale", type=float, default=1.0, help="scale of the grid sizes (e.g. 0.125 for a quick check)")
    p.add_argument("--batch-size", type=int, default=8, help="instances in the batch rows")
    p.add_argument("--skip-batch", action="store_true", help="skip the multi-threaded batch rows")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-memory line")
    p.add_argument("--lpmp", metavar="DRIVER", default=None,
                   help="LPMP GAEC driver (dev/lpmp_gaec/build.sh) for side-by-side rows")

    p = add("layer", run_layer, "AMWC layer forward + backward")
    p.add_argument("--repeats", type=int, default=3, help="timed forward + backward runs (median reported)")
    p.add_argument("--warmup", type=int, default=0, help="untimed runs before the timed ones")
    p.add_argument("--batch", type=int, default=2, help="images per batch")
    p.add_argument("--height", type=int, default=256, help="grid height (stride-4 pixels)")
    p.add_argument("--width", type=int, default=512, help="grid width (stride-4 pixels)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--num-thing-classes", type=int, default=8)
    p.add_argument("--edge-distances", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    p.add_argument("--num-samples", type=int, default=5, help="N, perturbations averaged in the backward")
    p.add_argument("--threads", type=int, default=0, help="solver threads (0 = one per instance, <= cores)")
    p.add_argument("--no-local-search", action="store_true", help="disable the solver's local search")
    p.add_argument("--variants", nargs="+", default=["warm32"], choices=sorted(LAYER_VARIANTS),
                   help="backward variants, interleaved in every repeat (default: warm32, the layer's default)")
    p.add_argument("--memory", action="store_true", help="also the peak-memory growth of each variant")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)

    p = add("inference", run_inference, "per image: network, AMWC solve, rest of the post-processing")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per dataset (median reported)")
    p.add_argument("--datasets", nargs="+", choices=sorted(INFERENCE_DATASETS), default=["cityscapes", "coco"])
    p.add_argument("--scale", type=float, default=1.0, help="scale of the image size (e.g. 0.25 for a quick check)")
    p.add_argument("--device", default=None, help="device of the network and the outputs (default: cuda if available)")
    p.add_argument("--post-input", choices=["synthetic", "network"], default="synthetic",
                   help="logits fed to the post-processor: a synthetic scene (default) or the random network's")
    p.add_argument("--sem-seg-head", action="store_true",
                   help="MODEL.COPS.PREDICT_SEM_SEG_HEAD True: also the head's full-resolution logits "
                        "(off in the configs read here)")
    p.add_argument("--skip-network", action="store_true", help="time only the post-processing")
    p.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: PyTorch's default)")
    p.add_argument("--cpu-time", action="store_true",
                   help="CPU time of the process (time.process_time) instead of wall time")

    args = parser.parse_args(argv)
    checks = [("repeats", 1), ("batch_size", 1), ("batch", 1), ("height", 1), ("width", 1), ("num_classes", 1),
              ("num_samples", 1), ("warmup", 0), ("threads", 0)]
    for key, low in checks:
        if getattr(args, key, low) < low:
            parser.error(f"--{key.replace('_', '-')} must be >= {low}")
    if getattr(args, "scale", 1.0) <= 0:
        parser.error("--scale must be > 0")
    if args.command == "layer" and not 0 <= args.num_thing_classes <= args.num_classes:
        parser.error("--num-thing-classes must lie in [0, --num-classes]")
    if args.command == "inference" and args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None):
    args = parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
