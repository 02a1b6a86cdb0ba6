#!/usr/bin/env python
"""Benchmark of the native AMWC / MWC solvers on seeded Cityscapes- and COCO-size instances.

Instances (``detectron2_cops.solvers.synthetic``): costs from a synthetic panoptic map (Voronoi
stuff cells, elliptic things) plus noise, on the output-stride-4 grid of COPS, with two kinds of
noise: spatially correlated (``synthetic_instance``, CNN-like) and i.i.d. (``iid_noise_instance``,
the costs of an untrained or uncertain network; harder for GAEC). Sizes:

* Cityscapes-size: a 1024x2048 image at stride 4 = 256x512 nodes, K = 19 (8 partitionable),
  edge distances 1, 4, 16, 32, 64;
* COCO-size: 640x640 at stride 4 = 160x160 nodes, K = 133 (80 partitionable), distances 1, 4, 16, 32.

Rows: AMWC by GAEC alone and with local search (the default), the default once more with the
solvers' graph-structure cache cleared before every solve (the time of a first solve on a grid;
the other rows repeat solves on one grid, as training and inference do, and reuse the cached
structure), MWC (the same costs, no partitionable class: the problem the backward pass
solves), a batch of 8 Cityscapes-size instances on 1 and 2 threads, and the peak memory of one
Cityscapes-size solve (measured in a fresh subprocess). Times are medians over ``--repeats``
runs, single-threaded unless stated.

With ``--lpmp DRIVER`` (an executable built by ``tools/lpmp_gaec/build.sh`` from LPMP, the solver
the original COPS code calls), LPMP's GAEC runs on the same instances, interleaved with ours in
every repeat (so both see the same machine load), and the table gives LPMP's objective and time
(its GAEC call only, without building its instance) and the speed-up of each of our rows over it.

    python tools/benchmark_solver.py --seed 0 --repeats 7 [--lpmp /path/to/lpmp_gaec_driver]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from detectron2_cops.solvers import clear_graph_structure_cache, solve_amwc, solve_amwc_batch, solve_mwc
from detectron2_cops.solvers.synthetic import iid_noise_instance, synthetic_instance

CASES = {
    "Cityscapes 256x512": dict(height=256, width=512, num_classes=19, num_thing_classes=8, edge_distances=[1, 4, 16, 32, 64]),
    "COCO 160x160": dict(height=160, width=160, num_classes=133, num_thing_classes=80, edge_distances=[1, 4, 16, 32]),
}

_MEMORY_CHILD = r"""
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


NOISE = {"correlated": synthetic_instance, "i.i.d.": iid_noise_instance}


def timed(fn, repeats, desc):
    times, out = [], None
    for _ in tqdm(range(repeats), desc=desc, leave=False, file=sys.stderr):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def cold_solve(a):
    """(seconds, result) of a default solve of instance ``a`` after the graph-structure cache was
    cleared: the time of a first solve on these edges (validation and build of the structure)."""
    clear_graph_structure_cache()
    t0 = time.perf_counter()
    r = solve_amwc(*a, local_search=True)
    return time.perf_counter() - t0, r


def write_lpmp_instance(inst, path):
    """The instance in the binary format of tools/lpmp_gaec/lpmp_gaec_driver.cpp (float64 costs)."""
    N, K = inst.node_costs.shape
    with open(path, "wb") as f:
        np.array([N, K, inst.edges.shape[0]], dtype="<i8").tofile(f)
        inst.node_costs.astype("<f8").tofile(f)
        inst.edges.astype("<i8").tofile(f)
        inst.edge_costs.astype("<f8").tofile(f)
        inst.partitionable.astype(np.uint8).tofile(f)


def run_lpmp(driver, path):
    """(seconds in LPMP's GAEC, its objective) for one run of the driver."""
    out = subprocess.run([driver, path, "1"], check=True, capture_output=True, text=True).stdout.split()
    return float(out[1]), float(out[2])


def interleaved(fns, repeats, desc):
    """Runs each of ``fns`` (name -> callable returning (seconds or None, result)) once per repeat,
    in turn, so that all see the same machine load. Returns name -> (median s, min s, last result)."""
    times = {k: [] for k in fns}
    outs = {}
    for _ in tqdm(range(repeats), desc=desc, leave=False, file=sys.stderr):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            t, out = fn()
            times[k].append(time.perf_counter() - t0 if t is None else t)
            outs[k] = out
    return {k: (statistics.median(v), min(v), outs[k]) for k, v in times.items()}


def peak_memory(inst):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "instance.npz")
        np.savez(path, node_costs=inst.node_costs, edges=inst.edges, edge_costs=inst.edge_costs,
                 partitionable=inst.partitionable)
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, path], check=True, capture_output=True, text=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    return rec["peak_mb"], rec["peak_mb"] - rec["before_mb"], rec["reset"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic instances")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per row (median reported)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-batch", action="store_true", help="skip the multi-threaded batch rows")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory row")
    parser.add_argument("--lpmp", metavar="DRIVER", default=None,
                        help="LPMP GAEC driver executable (tools/lpmp_gaec/build.sh) for side-by-side rows")
    args = parser.parse_args(argv)

    rows = []
    print(f"detectron2-cops solver benchmark: seed {args.seed}, {args.repeats} repeats, {os.cpu_count()} CPU cores"
          + (f", LPMP driver {args.lpmp}" if args.lpmp else ""))
    insts = {}
    tmp = tempfile.TemporaryDirectory()
    for name, spec in CASES.items():
        for noise, make in NOISE.items():
            inst = make(**spec, seed=args.seed)
            insts[(name, noise)] = inst
            a = (inst.node_costs, inst.edges, inst.edge_costs, inst.partitionable)
            solve_amwc(*a)  # warm-up: first-touch of the per-thread buffers
            fns = {
                "gaec": lambda: (None, solve_amwc(*a, local_search=False)),
                "ls": lambda: (None, solve_amwc(*a, local_search=True)),
                "ls_cold": lambda: cold_solve(a),
                "mwc": lambda: (None, solve_mwc(*a[:3], local_search=True)),
            }
            if args.lpmp:
                path = os.path.join(tmp.name, "instance.bin")
                write_lpmp_instance(inst, path)
                fns["lpmp"] = lambda path=path: run_lpmp(args.lpmp, path)
            res = interleaved(fns, args.repeats, f"{name} {noise}")
            lp = res["lpmp"][0] if args.lpmp else None

            def speedup(t):
                return f"{lp / t:.2f}x LPMP" if lp else ""

            case = f"{name} {noise}"
            (t, m, r) = res["gaec"]
            rows.append((case, "AMWC GAEC", t, m, r.objective, int(r.instance_ids.max()) + 1, speedup(t)))
            (t, m, r) = res["ls"]
            rows.append((case, "AMWC GAEC + local search", t, m, r.objective, int(r.instance_ids.max()) + 1,
                         f"{speedup(t)}  {r.info['local_search_moves']} moves".strip()))
            t_ls = t
            (t, m, r) = res["ls_cold"]
            rows.append((case, "  same, structure not cached", t, m, r.objective, int(r.instance_ids.max()) + 1,
                         speedup(t)))
            (t, m, r) = res["mwc"]
            rows.append((case, "MWC GAEC + local search", t, m, r.objective, int(r.instance_ids.max()) + 1,
                         f"{t / t_ls:.2f}x AMWC time"))
            if args.lpmp:
                (t, m, obj) = res["lpmp"]
                rows.append((case, "LPMP AMWC GAEC (COPS)", t, m, obj, None,
                             f"N={inst.node_costs.shape[0]}, E={inst.edges.shape[0]}, K={inst.node_costs.shape[1]}"))
    tmp.cleanup()

    if not args.skip_batch:
        spec = CASES["Cityscapes 256x512"]  # correlated noise
        batch = [synthetic_instance(**spec, seed=args.seed + b) for b in range(args.batch_size)]
        batch = [(i.node_costs, i.edges, i.edge_costs, i.partitionable) for i in batch]
        solve_amwc_batch(batch, num_threads=2)  # warm-up
        t1, m1, _ = timed(lambda: solve_amwc_batch(batch, num_threads=1), args.repeats, "batch 1 thread")
        t2, m2, _ = timed(lambda: solve_amwc_batch(batch, num_threads=2), args.repeats, "batch 2 threads")
        rows.append(("Cityscapes 256x512 correlated", f"batch of {args.batch_size}, 1 thread", t1, m1, None, None, ""))
        rows.append(("Cityscapes 256x512 correlated", f"batch of {args.batch_size}, 2 threads", t2, m2, None, None,
                     f"{t1 / t2:.2f}x faster than 1 thread"))

    print()
    header = f"{'instance':<31} {'solver':<28} {'median ms':>10} {'min ms':>9} {'objective':>16} {'segments':>9}  notes"
    print(header)
    print("-" * len(header))
    for name, solver, med, mn, obj, segs, note in rows:
        obj_s = f"{obj:16.3f}" if obj is not None else f"{'':16}"
        seg_s = f"{segs:9d}" if segs is not None else f"{'':9}"
        print(f"{name:<31} {solver:<28} {med * 1e3:10.1f} {mn * 1e3:9.1f} {obj_s} {seg_s}  {note}")
    if not args.skip_memory:
        total, extra, reset = peak_memory(insts[("Cityscapes 256x512", "correlated")])
        if reset:
            print(f"\nPeak memory of one Cityscapes-size solve with local search (fresh process): {extra:.0f} MB "
                  f"above the process before the solve (peak RSS {total:.0f} MB, imports included)")
        else:
            print(f"\nPeak RSS of a fresh process solving one Cityscapes-size instance: {total:.0f} MB "
                  "(imports included; this system cannot reset the peak counter)")
    if not args.lpmp:
        print("\nNo --lpmp driver given: build LPMP's GAEC with tools/lpmp_gaec/build.sh for side-by-side rows.")

if __name__ == "__main__":
    main()
