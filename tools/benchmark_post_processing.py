#!/usr/bin/env python
"""Post-processing time after the network, old vs new implementation interleaved in one run.

For each dataset size (Cityscapes 1024x2048, K = 19; COCO 640x640, K = 133; the configs of
``tools/benchmark_inference.py``) the post-processor gets the logits of a seeded synthetic scene
(``benchmark_inference.synthetic_logits``, no calibration) and is timed with
``time.process_time`` (CPU time of the process, the solver's threads included) on one PyTorch
thread; the batched AMWC solve inside it is timed the same way. Old and new run alternately in
every repeat, so a load on the machine affects both alike. Reported (medians over repeats):
``solve``, ``rest`` (everything else the post-processor does), ``(solve + rest) / solve``, and
``argmax`` (what the semantic evaluators then do with the outputs: ``sem_seg.argmax(0)``, and
``sem_seg_head.argmax(0)`` when present), which is not part of the ratio.

``--old`` is a Python file holding the old post-processor class (default: the previous
full-resolution implementation, ``tests/_reference_post_processing.py``; e.g.
``git show HEAD~1:detectron2_cops/modeling/post_processing.py > /tmp/old.py`` for an earlier
version of this module).

    OMP_NUM_THREADS=1 python tools/benchmark_post_processing.py --repeats 3 [--old /tmp/old.py]
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def load_old(path):
    """The post-processor class of the file at ``path`` (loaded as a separate module, its
    registry decorator removed so that it does not clash with the installed one)."""
    src = Path(path).read_text().replace("@POST_PROCESSOR_REGISTRY.register()", "")
    spec = importlib.util.spec_from_loader("_old_post_processing", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(src, str(path), "exec"), module.__dict__)
    for name in ("ReferenceAMWCPostProcessor", "AMWCPostProcessor"):
        if hasattr(module, name):
            return module, getattr(module, name)
    raise SystemExit(f"{path}: no AMWCPostProcessor class")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", default=str(ROOT / "tests/_reference_post_processing.py"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", nargs="+", default=["cityscapes", "coco"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from detectron2.config import get_cfg

    import detectron2_cops.modeling.post_processing as new_module
    from benchmark_inference import DATASETS, synthetic_logits
    from detectron2_cops.config import add_cops_config

    old_module, old_cls = load_old(args.old)
    # An old implementation without the switch always predicts sem_seg_head.
    old_has_head_switch = "predict_sem_seg_head" in inspect.signature(old_cls.__init__).parameters
    solve_times = []
    for module in (new_module, old_module):
        def timed(*a, _inner=module.solve_amwc_batch, **k):
            t0 = time.process_time()
            out = _inner(*a, **k)
            solve_times.append(time.process_time() - t0)
            return out
        module.solve_amwc_batch = timed

    print(f"old: {args.old}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"seed {args.seed}, {args.repeats} repeats, CPU time (time.process_time)")
    rows = []
    for name in args.datasets:
        cfg = get_cfg()
        add_cops_config(cfg)
        cfg.merge_from_file(str(DATASETS[name]["config"]))
        H, W = DATASETS[name]["size"]
        for head in (True, False):
            cfg2 = cfg.clone()
            cfg2.MODEL.COPS.PREDICT_SEM_SEG_HEAD = head
            new = new_module.AMWCPostProcessor(cfg2)
            old_kw = new_module.AMWCPostProcessor.from_config(cfg2)
            if not old_has_head_switch:
                old_kw.pop("predict_sem_seg_head")
            old = old_cls(**old_kw)
            K, s = new.num_classes, new.common_stride
            h, w = -(-H // s), -(-W // s)
            shapes = [(2, -(-h // i), -(-w // i)) for i in new.edge_sampling_intervals]
            sem, cut = synthetic_logits((1, K, h, w), shapes, new.thing_ids, new.edge_distances,
                                        args.seed, "cpu")
            times = {"old": [], "new": []}
            for rep in range(args.repeats + 1):  # the first is a warm-up
                for label, post in (("old", old), ("new", new)):
                    solve_times.clear()
                    t0 = time.process_time()
                    out = post(sem, cut, [(H, W)])
                    total = time.process_time() - t0
                    t0 = time.process_time()
                    out[0]["sem_seg"].argmax(dim=0)
                    if head:
                        out[0]["sem_seg_head"].argmax(dim=0)
                    consume = time.process_time() - t0
                    del out
                    if rep:
                        times[label].append((sum(solve_times), total - sum(solve_times), consume))
            for label in ("old", "new"):
                label_old = "old (sem_seg_head always on)" if label == "old" and not old_has_head_switch and not head else label
                t = times[label]
                med = statistics.median
                rows.append((name, f"{H}x{W}", "on" if head else "off", label_old,
                             med(x[0] for x in t), med(x[1] for x in t),
                             med((x[0] + x[1]) / x[0] for x in t), med(x[2] for x in t)))
    print(f"\n{'dataset':<11} {'image':>9} {'head':>4} {'impl':<30} {'solve ms':>9} {'rest ms':>8} "
          f"{'ratio':>6} {'argmax ms':>9}")
    for r in rows:
        print(f"{r[0]:<11} {r[1]:>9} {r[2]:>4} {r[3]:<30} {r[4] * 1e3:9.0f} {r[5] * 1e3:8.0f} "
              f"{r[6]:6.2f} {r[7] * 1e3:9.0f}")
    print("\nratio: (solve + rest) / solve, median of per-repeat ratios; argmax: the evaluators' "
          "argmax over the semantic outputs, not in the ratio.")


if __name__ == "__main__":
    main()
