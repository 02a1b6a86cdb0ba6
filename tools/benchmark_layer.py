#!/usr/bin/env python
"""Benchmark of the differentiable AMWC layer: forward + backward at Cityscapes size.

Runs :class:`detectron2_cops.layers.AMWCLayer` (forward AMWC solve, backward with ``N``
perturbed MWC solves, COPS Sec. 3.4/3.5) on a batch of seeded synthetic instances
(:func:`detectron2_cops.solvers.synthetic.synthetic_instance`) whose costs are leaf tensors, with
the loss :class:`~detectron2_cops.layers.PanopticQualitySurrogate` against the synthetic ground
truth, and prints the median wall time of forward, backward and total, each split into the time
inside the batched solver call and everything else (the Python/PyTorch around it), plus the
non-solver share of the total. The loss itself (the surrogate) is timed separately and is not part
of the layer's time.

Default: 2 images, K = 19 classes (8 things), a 256 x 512 grid (a 1024 x 2048 Cityscapes image
at output stride 4), edge distances [1, 4, 16, 32, 64], N = 5, lambda ~ U(1, 5000).

``--variants`` compares backward configurations of the layer, interleaved within every repeat
(so that all see the same machine load) and with the same lambdas: ``cold64`` (the COPS code:
every perturbed MWC solved from scratch, float64 costs), ``cold32``, ``warm64`` and ``warm32``
(the layer's default: ``backward_warm_start=True, backward_float32=True``). A summary gives each
variant's forward and backward medians and their ratio. ``--memory`` adds, per variant, the
peak-memory increase of one forward + backward, measured in a fresh subprocess as the growth of
the process's peak resident set size (``VmHWM`` of ``/proc/self/status`` on Linux, else
``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from just before the forward to just after the
backward: everything the layer allocates (NumPy, PyTorch, the native solver), not only Python
objects.

Examples::

    python tools/benchmark_layer.py --seed 0 --repeats 3
    python tools/benchmark_layer.py --batch 4 --height 128 --width 256 --repeats 3 \
        --variants cold64 warm32 cold32 warm64
    python tools/benchmark_layer.py --batch 8 --height 128 --width 256 --repeats 1 --memory \
        --variants cold64 warm32
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2_cops.layers import AMWCLayer, PanopticQualitySurrogate  # noqa: E402
from detectron2_cops.solvers.synthetic import synthetic_instance  # noqa: E402


#: variant -> (backward_warm_start, backward_float32)
VARIANTS = {"cold64": (False, False), "cold32": (False, True), "warm64": (True, False), "warm32": (True, True)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic instances and lambdas")
    p.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs (median reported)")
    p.add_argument("--batch", type=int, default=2, help="images per batch")
    p.add_argument("--height", type=int, default=256, help="grid height (stride-4 pixels)")
    p.add_argument("--width", type=int, default=512, help="grid width (stride-4 pixels)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--num-thing-classes", type=int, default=8)
    p.add_argument("--edge-distances", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    p.add_argument("--num-samples", type=int, default=5, help="N, perturbations averaged in backward")
    p.add_argument("--threads", type=int, default=0, help="solver threads (0 = one per instance, <= cores)")
    p.add_argument("--no-local-search", action="store_true", help="disable the solver's local search")
    p.add_argument("--warmup", type=int, default=0, help="untimed runs before the timed ones")
    p.add_argument("--variants", nargs="+", default=["warm32"], choices=sorted(VARIANTS),
                   help="backward configurations, interleaved in every repeat (default: the layer's default)")
    p.add_argument("--memory", action="store_true",
                   help="also measure each variant's peak-memory increase (peak RSS) in a fresh subprocess")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.batch < 1 or args.height < 1 or args.width < 1:
        p.error("--batch, --height and --width must be >= 1")
    if not 0 <= args.num_thing_classes <= args.num_classes:
        p.error("--num-thing-classes must lie in [0, --num-classes]")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    return args


def build_batch(args):
    """Leaf cost tensors and ground truth (masks, classes) for ``args.batch`` synthetic images."""
    insts = [
        synthetic_instance(args.height, args.width, args.num_classes, args.num_thing_classes,
                           args.edge_distances, seed=args.seed + b)
        for b in range(args.batch)
    ]
    H, W, K = args.height, args.width, args.num_classes
    sem = np.stack([i.node_costs.reshape(H, W, K).transpose(2, 0, 1) for i in insts])
    semantic_costs = torch.from_numpy(np.ascontiguousarray(sem)).requires_grad_()
    grid = insts[0].grid
    maps = grid.edge_values_to_maps(np.stack([i.edge_costs for i in insts]))
    edge_costs = [torch.from_numpy(np.ascontiguousarray(m)).requires_grad_() for m in maps]
    things = set(range(args.num_thing_classes))
    gt_masks, gt_classes = [], []
    for inst in insts:
        masks, classes = [], []
        for c in np.unique(inst.semantic).tolist():
            sel = inst.semantic == c
            if c in things:
                for i in np.unique(inst.instance[sel]).tolist():
                    masks.append(sel & (inst.instance == i))
                    classes.append(c)
            else:
                masks.append(sel)
                classes.append(c)
        gt_masks.append(torch.from_numpy(np.stack(masks)))
        gt_classes.append(torch.tensor(classes, dtype=torch.long))
    return semantic_costs, edge_costs, gt_masks, gt_classes


def make_layer(args, variant):
    warm, f32 = VARIANTS[variant]
    return AMWCLayer(args.num_classes, list(range(args.num_thing_classes)), args.edge_distances,
                     num_samples=args.num_samples, lambda_min=1.0, lambda_max=5000.0,
                     local_search=not args.no_local_search, num_threads=args.threads,
                     backward_warm_start=warm, backward_float32=f32)


def make_loss(args):
    # Cityscapes area limits (image pixels) converted to the stride-4 grid.
    return PanopticQualitySurrogate(list(range(args.num_thing_classes)),
                                    stuff_area=2048 / 16, instance_area=200 / 16, ratio_eps=0.1)


def run_once(layer, loss_fn, semantic_costs, edge_costs, gt_masks, gt_classes, gen):
    semantic_costs.grad = None
    for e in edge_costs:
        e.grad = None
    t_f = time.perf_counter()
    outs = layer(semantic_costs, edge_costs, generator=gen)
    t_fwd = time.perf_counter() - t_f
    t_l = time.perf_counter()
    loss = loss_fn([o.masks for o in outs], [o.mask_classes for o in outs], gt_masks, gt_classes).loss
    t_loss = time.perf_counter() - t_l
    t_b = time.perf_counter()
    loss.backward()
    t_total_bwd = time.perf_counter() - t_b
    timing = dict(layer.last_timing)
    return {
        "fwd_solver": timing["forward_solver_s"],
        "fwd_other": t_fwd - timing["forward_solver_s"],
        "bwd_solver": timing["backward_solver_s"],
        "bwd_other": timing["backward_other_s"],
        # backward through the surrogate itself (outside the layer)
        "loss_bwd": t_total_bwd - timing["backward_solver_s"] - timing["backward_other_s"],
        "loss_fwd": t_loss,
        "segments": sum(int(o.masks.shape[0]) for o in outs),
        "loss": float(loss.detach()),
    }


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB: ``VmHWM`` of ``/proc/self/status`` on Linux
    (the peak of this process's own memory since its exec), else ``ru_maxrss``. (On Linux
    ``ru_maxrss`` also keeps the parent's resident size at the fork that started the process, so
    a child of a large parent would see no growth at all.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def memory_child(args) -> int:
    """One forward + backward of ``args.memory_child``; prints the peak-RSS growth (JSON)."""
    semantic_costs, edge_costs, gt_masks, gt_classes = build_batch(args)
    layer, loss_fn = make_layer(args, args.memory_child), make_loss(args)
    before = peak_rss_kib()
    run_once(layer, loss_fn, semantic_costs, edge_costs, gt_masks, gt_classes,
             torch.Generator().manual_seed(args.seed))
    after = peak_rss_kib()
    print(json.dumps({"maxrss_growth_mib": (after - before) / 1024, "maxrss_mib": after / 1024}))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.memory_child:
        return memory_child(args)
    print(f"machine: {os.cpu_count()} CPU cores (affinity {len(os.sched_getaffinity(0))}), "
          f"torch {torch.__version__} with {torch.get_num_threads()} intra-op threads")
    print(f"batch {args.batch} x K={args.num_classes} ({args.num_thing_classes} things) x "
          f"{args.height}x{args.width} grid, edge distances {args.edge_distances}, N={args.num_samples}, "
          f"solver threads={args.threads or 'auto'}, local search={not args.no_local_search}, "
          f"variants {args.variants}")
    t0 = time.perf_counter()
    semantic_costs, edge_costs, gt_masks, gt_classes = build_batch(args)
    print(f"synthetic instances built in {time.perf_counter() - t0:.2f} s; "
          f"{sum(int(np.prod(e.shape[1:])) for e in edge_costs)} edge-map positions per image")

    layers = {v: make_layer(args, v) for v in args.variants}
    loss_fn = make_loss(args)
    rows = {v: [] for v in args.variants}
    for r in tqdm(range(args.warmup + args.repeats), desc="forward+backward", unit="run"):
        seed = args.seed + 1000 * r  # the same lambdas for every variant of this repeat
        for v in args.variants:
            row = run_once(layers[v], loss_fn, semantic_costs, edge_costs, gt_masks, gt_classes,
                           torch.Generator().manual_seed(seed))
            if r >= args.warmup:
                rows[v].append(row)

    summary = []
    for v in args.variants:
        med = {k: statistics.median(r[k] for r in rows[v]) for k in rows[v][0]}
        fwd = med["fwd_solver"] + med["fwd_other"]
        bwd = med["bwd_solver"] + med["bwd_other"]
        solver = med["fwd_solver"] + med["bwd_solver"]
        other = med["fwd_other"] + med["bwd_other"]
        total = fwd + bwd
        print()
        print(f"[{v}] median over {len(rows[v])} runs (seconds); {int(med['segments'])} predicted segments in "
              f"the batch, loss {med['loss']:.4f}")
        print(f"{'':10s} {'solver':>9s} {'other':>9s} {'total':>9s} {'other %':>8s}")
        for name, s_, o in (("forward", med["fwd_solver"], med["fwd_other"]),
                            ("backward", med["bwd_solver"], med["bwd_other"]),
                            ("total", solver, other)):
            print(f"{name:10s} {s_:9.3f} {o:9.3f} {s_ + o:9.3f} {100 * o / (s_ + o):7.1f}%")
        print(f"non-solver share of the layer's total: {100 * other / total:.1f}% (target < 25%)")
        print(f"not in the layer (PQ surrogate): forward {med['loss_fwd']:.3f} s, backward {med['loss_bwd']:.3f} s")
        summary.append((v, fwd, bwd))
    mem = {}
    if args.memory:
        for v in args.variants:
            cmd = [sys.executable, __file__, "--memory-child", v, "--seed", str(args.seed),
                   "--batch", str(args.batch), "--height", str(args.height), "--width", str(args.width),
                   "--num-classes", str(args.num_classes), "--num-thing-classes", str(args.num_thing_classes),
                   "--num-samples", str(args.num_samples), "--threads", str(args.threads),
                   "--edge-distances", *map(str, args.edge_distances)]
            if args.no_local_search:
                cmd.append("--no-local-search")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            mem[v] = json.loads(out.strip().splitlines()[-1])
    print()
    print(f"{'variant':8s} {'forward s':>10s} {'backward s':>11s} {'bwd/fwd':>8s}"
          + (f" {'peak mem +MiB':>14s}" if mem else ""))
    for v, fwd, bwd in summary:
        line = f"{v:8s} {fwd:10.3f} {bwd:11.3f} {bwd / fwd:8.2f}"
        if mem:
            line += f" {mem[v]['maxrss_growth_mib']:14.0f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
