#!/usr/bin/env python
"""Per-image inference time of COPS: network, AMWC solver, rest of the post-processing.

For each dataset the model is built from the project's config (random weights: only the time is
measured) and run on one seeded random image at the size COPS evaluates:

* Cityscapes: 1024 x 2048 (``configs/Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml``;
  grid 256 x 512, K = 19, edge distances 1, 4, 16, 32, 64);
* COCO: 640 x 640, the largest image at ``INPUT.MAX_SIZE_TEST = 640``
  (``configs/COCO-PanopticSegmentation/cops_R_52_fully_differentiable.yaml``; grid 160 x 160, K = 133,
  edge distances 1, 4, 16, 32).

Columns (medians over ``--repeats``, after one warm-up run):

* ``network``: ``preprocess_image`` + backbone + semantic head + affinity head (the part of
  ``COPS.forward`` before the post-processor);
* ``solver``: the batched AMWC solve inside the post-processor (GAEC + local search, C++);
* ``rest``: everything else the post-processor does (cost calibration, graph and cost arrays,
  upsampling, softmax, panoptic map, masks, boxes, scores); ``--no-sem-seg-head`` turns off the
  ``sem_seg_head`` output (``MODEL.COPS.PREDICT_SEM_SEG_HEAD``), the largest part of it;
* ``post / solver``: (solver + rest) / solver.

A network with random weights gives noise logits, on which GAEC behaves unlike on a trained
model's. So by default the post-processor is fed logits of the network's output shape made from a
seeded synthetic panoptic scene with CNN-like noise (``detectron2_cops.solvers.synthetic``), with
the scene's thing classes mapped onto the dataset's thing classes; ``--post-input network`` feeds
it the random network's own logits instead.

The authors report about 1.8 s per Cityscapes image and 0.4 s per COCO image (one GPU, the
network included). The solver runs on the CPU on one thread per image in either case.

    python tools/benchmark_inference.py --seed 0 --repeats 3 [--device cuda] [--datasets cityscapes]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    "cityscapes": dict(
        config=ROOT / "configs/Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml",
        size=(1024, 2048),
        authors_s=1.8,
    ),
    "coco": dict(
        config=ROOT / "configs/COCO-PanopticSegmentation/cops_R_52_fully_differentiable.yaml",
        size=(640, 640),
        authors_s=0.4,
    ),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, image and synthetic logits")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per dataset (median reported)")
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["cityscapes", "coco"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device of the network and the post-processing tensors (default: cuda if available)")
    p.add_argument("--post-input", choices=["synthetic", "network"], default="synthetic",
                   help="logits fed to the post-processor (see the module docstring)")
    p.add_argument("--no-sem-seg-head", action="store_true",
                   help="MODEL.COPS.PREDICT_SEM_SEG_HEAD = False: no full-resolution softmax of the head")
    p.add_argument("--skip-network", action="store_true",
                   help="do not time the network (its output shape is still computed once)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def build(name, device, seed, sem_seg_head=True):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from detectron2_cops.config import add_cops_config

    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(DATASETS[name]["config"]))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.MODEL.COPS.PREDICT_SEM_SEG_HEAD = sem_seg_head
    cfg.freeze()
    torch.manual_seed(seed)
    return cfg, build_model(cfg).eval()


def synthetic_logits(sem_shape, cut_shapes, thing_ids, distances, seed, device):
    """Logits ``[1, K, h, w]`` and cut-logit maps of the network's shapes from a seeded synthetic
    scene: ``logits = -node costs``, ``cut logits = -edge costs`` (the costs the post-processor
    recovers without calibration)."""
    from detectron2_cops.solvers.synthetic import synthetic_instance

    _, K, h, w = sem_shape
    T = len(thing_ids)
    inst = synthetic_instance(h, w, K, T, distances, seed=seed)
    # synthetic class j < T is a thing: map it onto the dataset's thing ids, the rest onto stuff.
    stuff = [k for k in range(K) if k not in set(thing_ids)]
    order = list(thing_ids) + stuff  # model class of synthetic class j
    sem = np.empty((K, h, w), dtype=np.float32)
    sem[order] = -inst.node_costs.T.reshape(K, h, w)
    maps = inst.grid.edge_values_to_maps(-inst.edge_costs)
    cuts = []
    for m, shape in zip(maps, cut_shapes):
        assert tuple(shape) == tuple(m.shape), (shape, m.shape)
        cuts.append(torch.from_numpy(np.asarray(m, dtype=np.float32)[None]).to(device))
    return torch.from_numpy(sem[None]).to(device), cuts


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    args = parse_args(argv)
    import detectron2_cops  # noqa: F401  (registers the COPS components)
    import detectron2_cops.modeling.post_processing as pp_module

    # Time the solver inside the post-processor by wrapping the function it calls.
    solver_times = []
    inner = pp_module.solve_amwc_batch

    def timed_solve(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        solver_times.append(time.perf_counter() - t0)
        return out

    pp_module.solve_amwc_batch = timed_solve

    dev = args.device
    print(
        f"detectron2-cops inference benchmark: seed {args.seed}, {args.repeats} repeats, device {dev}"
        + (f" ({torch.cuda.get_device_name(0)})" if dev.startswith("cuda") else "")
        + f", {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"post-processor input: {args.post_input}, sem_seg_head {'off' if args.no_sem_seg_head else 'on'}"
    )
    rows = []
    for name in args.datasets:
        cfg, model = build(name, dev, args.seed, sem_seg_head=not args.no_sem_seg_head)
        H, W = DATASETS[name]["size"]
        g = torch.Generator().manual_seed(args.seed)
        image = torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8).float()
        batched = [{"image": image, "height": H, "width": W}]

        def network():
            images = model.preprocess_image(batched)
            features = model.backbone(images.tensor)
            sem = model.sem_seg_head.layers(features)
            cut = model.affinity_head.layers(features, sem)
            return images, sem, cut

        with torch.no_grad():
            images, sem, cut = network()  # warm-up, and the output shapes
            sync(dev)
            sizes = [tuple(int(v) for v in s) for s in images.image_sizes]
            if args.post_input == "synthetic":
                post = model.post_processor
                sem, cut = synthetic_logits(
                    tuple(sem.shape), [tuple(c.shape[1:]) for c in cut], post.thing_ids,
                    post.edge_distances, args.seed, dev,
                )

            def post_process():
                return model.post_processor(sem, cut, sizes, [(H, W)], calibration=model.calibration)

            out = post_process()  # warm-up
            sync(dev)
            net_t, post_t, solve_t = [], [], []
            for _ in range(args.repeats):
                if not args.skip_network:
                    t0 = time.perf_counter()
                    network()
                    sync(dev)
                    net_t.append(time.perf_counter() - t0)
                solver_times.clear()
                t0 = time.perf_counter()
                out = post_process()
                sync(dev)
                post_t.append(time.perf_counter() - t0)
                solve_t.append(sum(solver_times))
        med = statistics.median
        rest = [p - s for p, s in zip(post_t, solve_t)]
        ratio = med([p / s for p, s in zip(post_t, solve_t)])
        net = med(net_t) if net_t else float("nan")
        segs = len(out[0]["panoptic_seg"][1])
        rows.append((name, f"{H}x{W}", net, med(solve_t), med(rest), ratio, net + med(post_t),
                     DATASETS[name]["authors_s"], segs))
        del model

    print()
    header = (f"{'dataset':<11} {'image':>9} {'network ms':>11} {'solver ms':>10} {'rest ms':>8} "
              f"{'post/solver':>11} {'total ms':>9} {'authors':>8} {'segments':>9}")
    print(header)
    print("-" * len(header))
    for name, size, net, solve, rest, ratio, total, authors, segs in rows:
        print(f"{name:<11} {size:>9} {net * 1e3:11.0f} {solve * 1e3:10.0f} {rest * 1e3:8.0f} {ratio:11.2f} "
              f"{total * 1e3:9.0f} {authors:7.1f}s {segs:9d}")
    print("\npost/solver: (solver + rest) / solver, median of per-repeat ratios. 'authors': the original "
          "COPS per-image time (one GPU). Random weights: the network's time only.")


if __name__ == "__main__":
    main()
