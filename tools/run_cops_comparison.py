#!/usr/bin/env python3
"""Compare COPS' two training stages in one command: train stage 1 (pretraining), train stage 2
(fully differentiable, from stage 1's final checkpoint), evaluate both on the same validation
set and print one table (PQ, PQ_th, PQ_st, SQ, RQ, mIoU, AP; stage 1, stage 2, difference).
With ``--baseline-config`` (e.g. the Panoptic-DeepLab config trained with the same recipe) a
third model is trained and evaluated alike and the table gains its column and stage 2's lead.

Each training stage runs ``tools/train_net.py`` in a subprocess (always with ``--resume``:
Detectron2 continues from ``<stage>/last_checkpoint`` if there is one, else starts from
``MODEL.WEIGHTS``), with ``OUTPUT_DIR <output-dir>/<stage>`` and ``SEED <seed>``; the child's
output goes to ``<stage>/train_stdout.log`` and its progress lines to the console. Evaluation
runs in this process with ``tools/train_net.py``'s ``Trainer.test`` (the same evaluators as
``--eval-only``: PQ/SQ/RQ, mIoU of the AMWC node labels (``sem_seg``) and of the semantic head
(``sem_seg_head``), Cityscapes AP) and is saved to ``<stage>/eval/results.json``.

Resumable: re-running the same command skips a stage whose ``model_final.pth`` exists and an
evaluation whose ``results.json`` was made with the same settings, and resumes an interrupted
stage from its last checkpoint. A re-run with different stage settings (config, overrides,
seed, start weights) in the same folder stops with an error instead of mixing runs.
Wall time is recorded per stage (summed over resumed runs) and per evaluation.

Outputs in ``--output-dir``: ``stage1/``, ``stage2/``, ``baseline/`` (Detectron2 output folders),
``comparison.json`` and ``comparison.md`` (the table, the stage times, the settings).

Examples (run from the repository root; data in the official Cityscapes layout under
``$DETECTRON2_DATASETS/cityscapes``)::

    # full comparison, seed 1
    DETECTRON2_DATASETS=/path/to/root python tools/run_cops_comparison.py \\
        --output-dir output/compare_seed1 --seed 1

    # stage 2 only, from an existing stage-1 checkpoint, with a seed and overrides
    DETECTRON2_DATASETS=/path/to/root python tools/run_cops_comparison.py \\
        --output-dir output/compare_lr_seed2 --seed 2 \\
        --pretrained output/compare_seed1/stage1/model_final.pth \\
        --stage2-opts "SOLVER.BASE_LR 0.0005 MODEL.COPS.PQ_LOSS_WEIGHT 20"

    # quick check on 50 evenly spaced validation images
    ... --eval-images 50

    # with Panoptic-DeepLab trained on the same recipe as a third column
    ... --baseline-config configs/Cityscapes-PanopticSegmentation/panoptic_deeplab_R_18_512x256.yaml
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
DEFAULT_STAGE1_CONFIG = os.path.join(
    REPO, "configs", "Cityscapes-PanopticSegmentation", "cops_R_18_512x256_pretrain.yaml"
)
DEFAULT_STAGE2_CONFIG = os.path.join(
    REPO,
    "configs",
    "Cityscapes-PanopticSegmentation",
    "cops_R_18_512x256_fully_differentiable.yaml",
)
# This checkout's detectron2_cops first (as for the training children), not another install.
if REPO not in sys.path:
    sys.path.insert(0, REPO)
STAGES = ("stage1", "stage2", "baseline")
STATE_FILE = "comparison_stage.json"

#: (row name, result task, result key) of the comparison table, in order.
TABLE_ROWS = (
    ("PQ", "panoptic_seg", "PQ"),
    ("PQ_th", "panoptic_seg", "PQ_th"),
    ("PQ_st", "panoptic_seg", "PQ_st"),
    ("SQ", "panoptic_seg", "SQ"),
    ("RQ", "panoptic_seg", "RQ"),
    ("mIoU", "sem_seg", "mIoU"),
    ("mIoU_head", "sem_seg_head", "mIoU"),
    ("AP", "segm", "AP"),
    ("AP50", "segm", "AP50"),
)

# Lines of the child's output shown on the console (the rest is in the log file).
_PROGRESS = re.compile(
    r"eta: |Starting training|Overall training speed|Total training time|Loading config|"
    r"Traceback|Error|error:|FloatingPointError|Killed"
)

logger = logging.getLogger("detectron2_cops.run_cops_comparison")


class ComparisonError(RuntimeError):
    """A stage failed, or the output folder holds a run with other settings."""


# ----------------------------------------------------------------------------- arguments
def parse_opts(texts: Optional[Sequence[str]]) -> List[str]:
    """Config overrides ``"KEY VALUE KEY VALUE"`` (shell-quoted; repeatable) -> flat list.

    Raises:
        ValueError: an odd number of tokens (a key without a value).
    """
    out: List[str] = []
    for text in texts or []:
        out += shlex.split(text)
    if len(out) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {out}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output-dir", required=True, help="folder of the whole comparison")
    p.add_argument("--seed", type=int, default=0, help="SEED of both training stages")
    p.add_argument("--stage1-config", default=DEFAULT_STAGE1_CONFIG, help="stage-1 YAML")
    p.add_argument("--stage2-config", default=DEFAULT_STAGE2_CONFIG, help="stage-2 YAML")
    p.add_argument(
        "--pretrained",
        default=None,
        help="an existing stage-1 checkpoint: stage 1 is not trained, this file starts stage 2 "
        "and is evaluated as stage 1 (with --stage1-config)",
    )
    p.add_argument(
        "--opts", action="append", default=[],
        help='overrides for both stages and both evaluations, e.g. "DATALOADER.NUM_WORKERS 2"',
    )
    p.add_argument("--stage1-opts", action="append", default=[], help="overrides of stage 1")
    p.add_argument("--stage2-opts", action="append", default=[], help="overrides of stage 2")
    p.add_argument(
        "--baseline-config", default=None,
        help="a model to compare with, trained (with --opts, SEED) and evaluated like the stages, "
        "e.g. configs/Cityscapes-PanopticSegmentation/panoptic_deeplab_R_18_512x256.yaml",
    )
    p.add_argument("--baseline-opts", action="append", default=[], help="overrides of the baseline")
    p.add_argument(
        "--eval-opts", action="append", default=[],
        help="overrides of both evaluations only (e.g. INPUT.MIN_SIZE_TEST 1024)",
    )
    p.add_argument(
        "--eval-dataset", default=None,
        help="dataset to evaluate on (default: DATASETS.TEST[0] of the stage-2 config)",
    )
    p.add_argument(
        "--eval-images", type=int, default=0,
        help="evaluate on this many evenly spaced images of the eval dataset (0: all)",
    )
    p.add_argument("--num-gpus", type=int, default=1, help="passed to tools/train_net.py")
    p.add_argument(
        "--threads", type=int, default=0,
        help="PyTorch CPU threads of the training children (OMP_NUM_THREADS) and of the "
        "evaluation (0: leave as is). On a CPU shared with other jobs, 1 or 2 avoids the "
        "large slowdown of oversubscribed threads",
    )
    p.add_argument(
        "--skip-eval", action="store_true", help="train only (the table is not written)"
    )
    return p


# ----------------------------------------------------------------------------- state files
def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def stage_status(stage_dir: str) -> str:
    """``"done"`` (``model_final.pth`` exists), ``"partial"`` (a ``last_checkpoint`` exists) or
    ``"new"``."""
    if os.path.isfile(os.path.join(stage_dir, "model_final.pth")):
        return "done"
    if os.path.isfile(os.path.join(stage_dir, "last_checkpoint")):
        return "partial"
    return "new"


def _check_settings(stage_dir: str, settings: dict) -> dict:
    """The stage's state (``settings``, ``wall_s`` summed over runs); raises if the folder
    holds a run with other settings."""
    state = _read_json(os.path.join(stage_dir, STATE_FILE))
    if state is None:
        if stage_status(stage_dir) != "new":
            raise ComparisonError(
                f"'{stage_dir}' holds checkpoints of a run this tool did not start; "
                "use another --output-dir"
            )
        return {"settings": settings, "wall_s": 0.0, "runs": 0}
    if state["settings"] != settings:
        raise ComparisonError(
            f"'{stage_dir}' holds a run with other settings:\n  before: "
            f"{json.dumps(state['settings'], sort_keys=True)}\n  now:    "
            f"{json.dumps(settings, sort_keys=True)}\nuse another --output-dir"
        )
    return state


# ----------------------------------------------------------------------------- training
def train_command(config_file: str, opts: Sequence[str], num_gpus: int) -> List[str]:
    """The ``tools/train_net.py`` command of a stage (always ``--resume``; ``--no-final-eval``:
    this tool evaluates each stage itself, so the trainer's end-of-training evaluation would be
    done twice)."""
    return [
        sys.executable, TRAIN_NET, "--num-gpus", str(num_gpus), "--resume", "--no-final-eval",
        "--config-file", config_file, *opts,
    ]


def run_subprocess(cmd: Sequence[str], log_path: str, echo: Callable[[str], None]) -> int:
    """Run ``cmd`` from the repository root with this process's environment (plus the
    repository on ``PYTHONPATH``); all output to ``log_path``, progress lines to ``echo``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "a") as log:
        log.write(f"\n===== {datetime.datetime.now().isoformat()} {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            list(cmd), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if _PROGRESS.search(line):
                echo(line.rstrip())
        return proc.wait()


def train_stage(
    name: str,
    stage_dir: str,
    config_file: str,
    opts: Sequence[str],
    num_gpus: int,
    runner: Callable[[Sequence[str], str, Callable[[str], None]], int] = run_subprocess,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train one stage unless it is done; returns its state (``wall_s``, ``status``).

    Raises:
        ComparisonError: the folder holds a run with other settings, or the child fails
            (exit code, the tail of its log).
    """
    os.makedirs(stage_dir, exist_ok=True)
    settings = {"config_file": os.path.abspath(config_file), "opts": list(opts)}
    state = _check_settings(stage_dir, settings)
    status = stage_status(stage_dir)
    if status == "done":
        echo(f"[{name}] done before ({state['wall_s']:.0f} s): skipped")
        state["status"] = "skipped"
        return state
    echo(f"[{name}] {'resuming' if status == 'partial' else 'starting'} training in {stage_dir}")
    _write_json(os.path.join(stage_dir, STATE_FILE), state)
    cmd = train_command(config_file, opts, num_gpus)
    log_path = os.path.join(stage_dir, "train_stdout.log")
    start = time.perf_counter()
    rc = runner(cmd, log_path, lambda line: echo(f"[{name}] {line}"))
    elapsed = time.perf_counter() - start
    state["wall_s"] = float(state["wall_s"]) + elapsed
    state["runs"] = int(state.get("runs", 0)) + 1
    _write_json(os.path.join(stage_dir, STATE_FILE), state)
    if rc != 0 or stage_status(stage_dir) != "done":
        tail = ""
        if os.path.isfile(log_path):
            with open(log_path) as f:
                tail = "".join(f.readlines()[-30:])
        raise ComparisonError(
            f"[{name}] training failed (exit code {rc}"
            + ("" if rc else ", no model_final.pth")
            + f"); re-run the same command to resume. Log: {log_path}\n{tail}"
        )
    echo(f"[{name}] trained in {elapsed:.0f} s (stage total {state['wall_s']:.0f} s)")
    state["status"] = "trained"
    return state


# ----------------------------------------------------------------------------- evaluation
def _load_train_net():
    spec = importlib.util.spec_from_file_location("cops_train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_dataset(cfg, dataset: Optional[str], num_images: int, folder: str) -> str:
    """The dataset to evaluate: ``dataset`` (default ``DATASETS.TEST[0]``), or an evenly
    spaced subset of ``num_images`` of it registered under ``folder``."""
    name = dataset or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
    if not name:
        raise ComparisonError("no evaluation dataset: give --eval-dataset or DATASETS.TEST")
    if num_images <= 0:
        return name
    from detectron2.data import DatasetCatalog

    from detectron2_cops.data.subsets import evenly_spaced, register_panoptic_subset

    total = len(DatasetCatalog.get(name))
    sub = f"{name}_{min(num_images, total)}of{total}"
    return register_panoptic_subset(name, sub, evenly_spaced(total, num_images), folder)


def evaluate_checkpoint(
    name: str,
    eval_dir: str,
    config_file: str,
    opts: Sequence[str],
    weights: str,
    dataset: Optional[str],
    num_images: int,
    echo: Callable[[str], None] = print,
) -> dict:
    """Evaluate ``weights`` with the config of a stage (``Trainer.test``), or reuse
    ``eval_dir/results.json`` made with the same settings. Returns that file's content:
    ``{"settings", "results" (Detectron2's nested dict), "wall_s", "dataset",
    "num_images"}``."""
    settings = {
        "config_file": os.path.abspath(config_file),
        "opts": list(opts),
        "weights": os.path.abspath(weights),
        "weights_mtime": os.path.getmtime(weights),
        "dataset": dataset,
        "num_images": int(num_images),
    }
    path = os.path.join(eval_dir, "results.json")
    old = _read_json(path)
    if old is not None and old.get("settings") == settings:
        echo(f"[{name}] evaluated before ({old['wall_s']:.0f} s): reused {path}")
        return old

    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg

    from detectron2_cops.config import add_cops_config
    from detectron2_cops.panoptic_deeplab import add_panoptic_deeplab_config

    os.makedirs(eval_dir, exist_ok=True)
    train_net = _load_train_net()
    cfg = get_cfg()
    add_cops_config(cfg)
    add_panoptic_deeplab_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.WEIGHTS = weights
    cfg.OUTPUT_DIR = eval_dir
    dataset_name = _eval_dataset(cfg, dataset, num_images, os.path.join(eval_dir, "subset"))
    cfg.DATASETS.TEST = (dataset_name,)
    cfg.freeze()

    # Everything to <eval_dir>/log.txt; the progress lines also to the console.
    handler = logging.FileHandler(os.path.join(eval_dir, "log.txt"), mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
    console.addFilter(
        lambda r: bool(re.search(r"Inference done|Total inference|mIoU of", r.getMessage()))
    )
    loggers = [logging.getLogger(n) for n in ("detectron2", "detectron2_cops", "fvcore")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.addHandler(console)
        lg.setLevel(logging.INFO)
    echo(f"[{name}] evaluating {weights} on {dataset_name}")
    start = time.perf_counter()
    try:
        model = train_net.Trainer.build_model(cfg)
        DetectionCheckpointer(model).load(weights)
        with torch.no_grad():
            results = train_net.Trainer.test(cfg, model)
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.removeHandler(console)
            lg.setLevel(level)
        handler.close()
    elapsed = time.perf_counter() - start
    out = {
        "settings": settings,
        "dataset": dataset_name,
        "num_images": int(num_images),
        "results": _to_builtin(results),
        "wall_s": elapsed,
    }
    _write_json(path, out)
    echo(f"[{name}] evaluated in {elapsed:.0f} s")
    return out


def _to_builtin(obj):
    """Results with NumPy scalars as floats (for json)."""
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    try:
        return float(obj)
    except (TypeError, ValueError):
        return obj


# ----------------------------------------------------------------------------- table
def _metric(results: dict, task: str, key: str) -> float:
    value = results.get(task, {}).get(key)
    return float(value) if value is not None else math.nan


def comparison_rows(results1: dict, results2: dict, baseline: Optional[dict] = None) -> List[dict]:
    """One row per metric of :data:`TABLE_ROWS`: ``{"metric", "stage1", "stage2", "diff"}``
    (``diff = stage2 - stage1``), plus ``"baseline"`` and ``"lead" = stage2 - baseline`` when
    ``baseline`` results are given; NaN where a metric is missing."""
    rows = []
    for label, task, key in TABLE_ROWS:
        a, b = _metric(results1, task, key), _metric(results2, task, key)
        row = {"metric": label, "stage1": a, "stage2": b, "diff": b - a}
        if baseline is not None:
            row["baseline"] = _metric(baseline, task, key)
            row["lead"] = b - row["baseline"]
        rows.append(row)
    return rows


def _fmt(v: float, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def format_markdown(rows: List[dict], times: Dict[str, Optional[float]], header: str) -> str:
    """The table (and stage times) as markdown."""
    with_baseline = bool(rows) and "baseline" in rows[0]
    head = "| metric | stage 1 | stage 2 | stage 2 - stage 1 |"
    rule = "|---|---:|---:|---:|"
    if with_baseline:
        head += " baseline | stage 2 - baseline |"
        rule += "---:|---:|"
    lines = [header, "", head, rule]
    for r in rows:
        line = (
            f"| {r['metric']} | {_fmt(r['stage1'])} | {_fmt(r['stage2'])} | "
            f"{_fmt(r['diff'], signed=True)} |"
        )
        if with_baseline:
            line += f" {_fmt(r['baseline'])} | {_fmt(r['lead'], signed=True)} |"
        lines.append(line)
    lines += ["", "| wall time | seconds |", "|---|---:|"]
    for key, value in times.items():
        lines.append(f"| {key} | {'n/a' if value is None else f'{value:.0f}'} |")
    lines += [
        "",
        "mIoU: AMWC node labels (model output `sem_seg`, the paper's mIoU); "
        "mIoU_head: argmax of the semantic head (`sem_seg_head`). All in percent.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def run(args, echo: Callable[[str], None] = print, runner=run_subprocess) -> Optional[dict]:
    """Run the comparison for parsed ``args`` (see :func:`build_parser`); returns the content
    of ``comparison.json`` (None with ``--skip-eval``)."""
    out_dir = os.path.abspath(args.output_dir)
    os.makedirs(out_dir, exist_ok=True)
    common = parse_opts(args.opts)
    opts1 = common + parse_opts(args.stage1_opts)
    opts2 = common + parse_opts(args.stage2_opts)
    eval_opts = parse_opts(args.eval_opts)
    configs = [("--stage1-config", args.stage1_config), ("--stage2-config", args.stage2_config)]
    if args.baseline_config:
        configs.append(("--baseline-config", args.baseline_config))
    for label, path in configs:
        if not os.path.isfile(path):
            raise ComparisonError(f"{label} '{path}' does not exist")
    seed = ["SEED", str(args.seed)]
    dirs = {s: os.path.join(out_dir, s) for s in STAGES}
    times: Dict[str, Optional[float]] = {}
    total_start = time.perf_counter()

    # Stage 1
    if args.pretrained:
        stage1_weights = os.path.abspath(args.pretrained)
        if not os.path.isfile(stage1_weights):
            raise ComparisonError(f"--pretrained '{args.pretrained}' does not exist")
        echo(f"[stage1] not trained: using {stage1_weights}")
        times["stage1 training"] = None
    else:
        state = train_stage(
            "stage1", dirs["stage1"], args.stage1_config,
            opts1 + seed + ["OUTPUT_DIR", dirs["stage1"]], args.num_gpus, runner, echo,
        )
        stage1_weights = os.path.join(dirs["stage1"], "model_final.pth")
        times["stage1 training"] = state["wall_s"]

    # Stage 2
    state = train_stage(
        "stage2", dirs["stage2"], args.stage2_config,
        opts2 + seed + ["MODEL.WEIGHTS", stage1_weights, "OUTPUT_DIR", dirs["stage2"]],
        args.num_gpus, runner, echo,
    )
    stage2_weights = os.path.join(dirs["stage2"], "model_final.pth")
    times["stage2 training"] = state["wall_s"]
    stages = [
        ("stage1", args.stage1_config, opts1, stage1_weights),
        ("stage2", args.stage2_config, opts2, stage2_weights),
    ]
    if args.baseline_config:
        opts_b = common + parse_opts(args.baseline_opts)
        state = train_stage(
            "baseline", dirs["baseline"], args.baseline_config,
            opts_b + seed + ["OUTPUT_DIR", dirs["baseline"]], args.num_gpus, runner, echo,
        )
        times["baseline training"] = state["wall_s"]
        baseline_weights = os.path.join(dirs["baseline"], "model_final.pth")
        stages.append(("baseline", args.baseline_config, opts_b, baseline_weights))
    if args.skip_eval:
        echo("--skip-eval: no evaluation")
        return None

    evals = {}
    for name, config, opts, weights in stages:
        evals[name] = evaluate_checkpoint(
            name, os.path.join(dirs[name], "eval"), config, opts + eval_opts, weights,
            args.eval_dataset, args.eval_images, echo,
        )
        times[f"{name} evaluation"] = evals[name]["wall_s"]

    rows = comparison_rows(
        evals["stage1"]["results"], evals["stage2"]["results"],
        evals["baseline"]["results"] if "baseline" in evals else None,
    )
    dataset = evals["stage2"]["dataset"]
    header = f"COPS stage 1 vs stage 2 on `{dataset}` (seed {args.seed}; stage 1: `{stage1_weights}`)"
    markdown = format_markdown(rows, times, header)
    summary = {
        "rows": rows,
        "times_s": times,
        "this_run_s": time.perf_counter() - total_start,
        "dataset": dataset,
        "seed": args.seed,
        "stage1_weights": stage1_weights,
        "stage2_weights": stage2_weights,
        "stage1_config": os.path.abspath(args.stage1_config),
        "stage2_config": os.path.abspath(args.stage2_config),
        "baseline_config": os.path.abspath(args.baseline_config) if args.baseline_config else None,
        "stage1_opts": opts1,
        "stage2_opts": opts2,
        "eval_opts": eval_opts,
        "results": {k: v["results"] for k, v in evals.items()},
    }
    _write_json(os.path.join(out_dir, "comparison.json"), summary)
    with open(os.path.join(out_dir, "comparison.md"), "w") as f:
        f.write(markdown)
    echo("\n" + markdown)
    echo(f"written: {os.path.join(out_dir, 'comparison.md')}, comparison.json")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 0:
        print("error: --threads must be >= 0", file=sys.stderr)
        return 2
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the children
        import torch

        torch.set_num_threads(args.threads)

    def echo(line: str) -> None:
        print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {line}", flush=True)

    try:
        run(args, echo)
    except (ComparisonError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
