"""Multi-process training and evaluation with ``tools/train_net.py`` (Detectron2's ``launch``,
``torch.distributed`` with gloo on the CPU), and the checks ``train_net`` makes before any
process starts.

The end-to-end test runs the real command line (``invoke_main`` -> ``check_args`` -> ``launch``
-> ``main``) in 2 CPU processes on the bundled two-image COCO sample, small images and a few
iterations: pretraining, then the fully differentiable stage from its checkpoint, then
``--eval-only`` in 2 processes and in 1. It checks that every rank holds the same model after
training (all parameters and buffers), that the losses are finite, that training changed the
weights, and that the evaluation in 2 processes counts each image once (the same PQ as in 1
process, both images in the prediction file).

Run as a script (``python tests/test_distributed.py ARGS...``), this file is the driver of one
such run: the ``train_net.py`` command line with ``Trainer.train`` recording, on every rank, the
final ``state_dict`` to ``OUTPUT_DIR/rank<R>.pth`` and, on rank 0, the losses and results to
``OUTPUT_DIR/record.json``.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
PRETRAIN_YAML = REPO / "configs" / "sample" / "cops_R_18_pretrain.yaml"
FD_YAML = REPO / "configs" / "sample" / "cops_R_18_fully_differentiable.yaml"
# The bundled sample's root (datasets/ in the repository); COPS_TEST_DATASETS overrides it.
DATASETS_ROOT = Path(os.environ.get("COPS_TEST_DATASETS", REPO / "datasets"))

# Small images and few iterations: the point is the multi-process machinery, not learning.
SMALL = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "256",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
    "SOLVER.WARMUP_ITERS", "1", "MODEL.COPS.NUM_THREADS", "1",
    "MODEL.COPS.PREDICT_INSTANCES", "False", "DATASETS.TEST", "()",
]
# --eval-only on the sample (PQ, mIoU); training runs evaluate nothing (DATASETS.TEST empty).
EVAL = SMALL[:-2] + ["DATASETS.TEST", "('coco_panoptic_sample',)"]


# ------------------------------------------------------------------------------- the driver
def _record(trainer, results) -> None:
    """Save this rank's final model and, on rank 0, the losses and results."""
    import torch
    from detectron2.utils import comm

    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    out = Path(trainer.cfg.OUTPUT_DIR)
    torch.save(
        {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        out / f"rank{comm.get_rank()}.pth",
    )
    if comm.is_main_process():
        losses = [v for v, _ in trainer.storage.history("total_loss").values()]
        record = {"world_size": comm.get_world_size(), "losses": losses, "results": results}
        (out / "record.json").write_text(json.dumps(record, default=float))


def _driver_main(args):
    """``train_net.main`` with a ``Trainer`` that records after training (runs in each process)."""
    sys.path.insert(0, str(TOOLS))
    import train_net
    from detectron2.utils import comm

    class RecordingTrainer(train_net.Trainer):
        def train(self):
            results = super().train()
            # DefaultTrainer.train returns the results only with TEST.EXPECTED_RESULTS; the
            # EvalHook of build_hooks keeps those of the evaluation at the end of training.
            _record(self, getattr(self, "_last_eval_results", results))
            return results

    train_net.Trainer = RecordingTrainer
    results = train_net.main(args)
    if args.eval_only and comm.is_main_process():
        out = Path(args.opts[args.opts.index("OUTPUT_DIR") + 1])
        record = {"world_size": comm.get_world_size(), "results": results}
        (out / "record.json").write_text(json.dumps(record, default=float))
    return results


# ------------------------------------------------------------------------------- the tests
def _need_detectron2():
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    pytest.importorskip("torch", reason="PyTorch is not installed")


def _run(argv, timeout=900, script=None):
    """Run the driver (or ``script``) with ``argv`` from the repository root; return
    (CompletedProcess, seconds). The timeout only guards against a hang: on an overloaded
    machine a fresh process can take minutes just to import PyTorch."""
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"  # the same arithmetic in 1 and in 2 processes
    if DATASETS_ROOT.resolve() != (REPO / "datasets").resolve():
        env["DETECTRON2_DATASETS"] = str(DATASETS_ROOT)
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, str(script or Path(__file__))] + [str(a) for a in argv],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout,
    )
    return res, time.perf_counter() - t0


def _check(res, what):
    assert res.returncode == 0, f"{what} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"


def _same_model(out: Path):
    import torch

    r0 = torch.load(out / "rank0.pth", weights_only=True)
    r1 = torch.load(out / "rank1.pth", weights_only=True)
    assert r0.keys() == r1.keys()
    different = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not different, f"ranks 0 and 1 differ after training in {different[:10]}"
    return r0


def _finite_losses(record):
    assert record["world_size"] == 2
    assert len(record["losses"]) >= 1
    assert all(math.isfinite(v) for v in record["losses"]), record["losses"]


def test_two_cpu_processes_train_both_stages_and_evaluate(tmp_path):
    """2 CPU processes (gloo): both stages train, the model (parameters and buffers) is identical
    on both ranks, losses are finite, the trained parameters change and the frozen ones do not,
    and --eval-only in 2 processes counts each image once (the same results as in 1 process)."""
    _need_detectron2()
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: Detectron2's launch would use NCCL, not CPU processes")
    if not (DATASETS_ROOT / "coco_panoptic_sample" / "panoptic.json").is_file():
        pytest.fail(f"the bundled COCO panoptic sample is missing under {DATASETS_ROOT}")
    url = "auto"
    pre, fd = tmp_path / "pretrain", tmp_path / "fd"

    # stage 1
    res, t_pre = _run(["--num-gpus", 2, "--dist-url", url, "--config-file", PRETRAIN_YAML,
                       *SMALL, "SOLVER.MAX_ITER", 3, "OUTPUT_DIR", pre])
    _check(res, "pretraining in 2 processes")
    _same_model(pre)
    record = json.loads((pre / "record.json").read_text())
    _finite_losses(record)
    weights = pre / "model_final.pth"
    assert weights.is_file()

    # stage 2 from the stage-1 checkpoint
    res, t_fd = _run(["--num-gpus", 2, "--dist-url", url, "--config-file", FD_YAML, *SMALL,
                      "SOLVER.MAX_ITER", 2, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", fd])
    _check(res, "fully differentiable training in 2 processes")
    trained = _same_model(fd)
    record = json.loads((fd / "record.json").read_text())
    _finite_losses(record)
    start = torch.load(weights, weights_only=False)["model"]
    changed = [k for k, v in trained.items()
               if k.startswith("calibration") and not torch.equal(torch.as_tensor(start[k]), v)]
    assert changed, "the fully differentiable stage did not change the cost calibration"
    frozen = [k for k in trained if k.startswith("backbone.") and k.endswith(".weight")]
    assert frozen and all(torch.equal(torch.as_tensor(start[k]), trained[k]) for k in frozen)

    # --eval-only of the final model in 2 processes and in 1: the same numbers
    evals, t_eval = {}, {}
    for n in (2, 1):
        out = tmp_path / f"eval{n}"
        res, t_eval[n] = _run(["--eval-only", "--num-gpus", n, "--dist-url", url,
                               "--config-file", FD_YAML, *EVAL,
                               "MODEL.WEIGHTS", fd / "model_final.pth", "OUTPUT_DIR", out])
        _check(res, f"--eval-only in {n} process(es)")
        evals[n] = json.loads((out / "record.json").read_text())
        assert evals[n]["world_size"] == n
        predictions = json.loads((out / "inference" / "predictions.json").read_text())
        assert sorted(a["image_id"] for a in predictions["annotations"]) == sorted(
            i["id"] for i in predictions["images"]
        )
    log = (tmp_path / "eval2" / "log.txt").read_text()
    assert "Panoptic evaluation of 2 images gathered from 2 process(es)" in log
    # PQ and the pixel statistics of both images (mIoU, pixel accuracy): a missing or doubly
    # counted image would change them
    results = evals[2]["results"]
    assert set(results) == {"panoptic_seg", "sem_seg"}  # the sample predicts no "sem_seg_head"
    assert all(math.isfinite(v) for v in results["panoptic_seg"].values())
    assert results["sem_seg"]["pACC"] > 0
    assert results == evals[1]["results"]
    print(f"\n2 processes: pretraining {t_pre:.1f} s, fully differentiable {t_fd:.1f} s, "
          f"--eval-only {t_eval[2]:.1f} s (1 process: {t_eval[1]:.1f} s)")
    for what, out in (("fully differentiable stage", fd), ("--eval-only", tmp_path / "eval2")):
        print(f"log tail of the 2-process {what} (rank 0):")
        print("\n".join(line[:160] for line in (out / "log.txt").read_text().splitlines()[-12:]))


def test_num_gpus_must_divide_the_batch_before_any_process_starts():
    """--num-gpus 3 with SOLVER.IMS_PER_BATCH 2: refused by check_args with exit status 2 and the
    reason, before launch (no process group, no output folder)."""
    _need_detectron2()
    res, seconds = _run(["--num-gpus", 3, "--config-file", PRETRAIN_YAML,
                         "OUTPUT_DIR", "output/never_created"], script=TOOLS / "train_net.py")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "SOLVER.IMS_PER_BATCH = 2 is not divisible by the number of processes 3" in res.stderr
    assert "[1, 2]" in res.stderr
    assert not (REPO / "output" / "never_created").exists()
    # 2 machines x 2 processes = 4 does not divide 2 either
    res, _ = _run(["--num-gpus", 2, "--num-machines", 2, "--dist-url", "tcp://127.0.0.1:1",
                   "--config-file", PRETRAIN_YAML], script=TOOLS / "train_net.py")
    assert res.returncode == 2
    assert "--num-gpus 2 x --num-machines 2" in res.stderr


def test_unreadable_config_exits_with_status_2():
    """No --config-file, or an override of a key that does not exist: exit status 2 and the
    reason (argparse's usage error), not a traceback."""
    _need_detectron2()
    res, _ = _run([], script=TOOLS / "train_net.py")
    assert res.returncode == 2 and "--config-file is required" in res.stderr, res.stderr[-2000:]
    res, _ = _run(["--config-file", PRETRAIN_YAML, "MODEL.NO_SUCH_KEY", 1], script=TOOLS / "train_net.py")
    assert res.returncode == 2 and "Non-existent key: MODEL.NO_SUCH_KEY" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_check_args_rejects_bad_layouts_and_missing_datasets(tmp_path, monkeypatch):
    _need_detectron2()
    sys.path.insert(0, str(TOOLS))
    import train_net

    def parse(*argv):
        args = train_net.argument_parser().parse_args(["--config-file", str(PRETRAIN_YAML), *argv])
        return args, train_net.build_config(args)

    from detectron2.data import MetadataCatalog
    from detectron2_cops.data.datasets import register_coco_panoptic_folder

    folder = MetadataCatalog.get("coco_panoptic_sample").get("dataset_folder")
    if folder is None or not os.path.isdir(folder):  # DETECTRON2_DATASETS set elsewhere
        register_coco_panoptic_folder("coco_panoptic_sample", str(DATASETS_ROOT), overwrite=True)
    monkeypatch.chdir(REPO)
    train_net.check_args(*parse())                      # the bundled sample
    train_net.check_args(*parse("--num-gpus", "2"))
    train_net.check_args(*parse("--eval-only", "--num-gpus", "3"))  # no batch at evaluation
    for argv, match in [
        (("--num-gpus", "0"), "--num-gpus must be >= 1"),
        (("--num-machines", "2", "--machine-rank", "2"), r"--machine-rank must lie in \[0"),
        (("--num-machines", "2", "--dist-url", "auto", "SOLVER.IMS_PER_BATCH", "4"),
         "works on one machine only"),
        (("--num-gpus", "2", "SOLVER.IMS_PER_BATCH", "3"), "not divisible"),
        (("--num-gpus", "2", "MODEL.DEVICE", "cuda"), "CUDA device"),
        (("SOLVER.IMS_PER_BATCH", "0"), "IMS_PER_BATCH must be >= 1"),
        (("SOLVER.IMS_PER_BATCH", "-2"), "IMS_PER_BATCH must be >= 1"),
        (("MODEL.DEVICE", "gpu"), "MODEL.DEVICE 'gpu' is not a device"),
    ]:
        if "cuda" in argv and __import__("torch").cuda.is_available():
            continue
        with pytest.raises(ValueError, match=match):
            train_net.check_args(*parse(*argv))
    # a dataset that is not registered, and one whose folder is not there
    with pytest.raises(ValueError, match="'coco_panoptic_smaple' is not registered"):
        train_net.check_args(*parse("DATASETS.TRAIN", "('coco_panoptic_smaple',)"))
    name = f"cops_missing_{uuid.uuid4().hex[:8]}"
    register_coco_panoptic_folder(name, str(tmp_path / "nowhere"))
    missing = str(tmp_path / "nowhere" / name)
    with pytest.raises(FileNotFoundError, match=f"'{name}' is not there: dataset_folder '{missing}'"):
        train_net.check_args(*parse("--eval-only", "DATASETS.TEST", f"('{name}',)"))


def test_missing_sample_names_the_folder_it_looked_in(tmp_path):
    """From a directory without datasets/, train_net.py refuses the sample config and names the
    folder (absolute path of ./datasets/coco_panoptic_sample) before any process starts."""
    _need_detectron2()
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run(
        [sys.executable, str(TOOLS / "train_net.py"), "--config-file", str(PRETRAIN_YAML)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert str(tmp_path / "datasets" / "coco_panoptic_sample") in res.stderr
    assert "DETECTRON2_DATASETS is not set" in res.stderr


if __name__ == "__main__":
    sys.path.insert(0, str(TOOLS))
    import train_net  # noqa: E402

    train_net.invoke_main(sys.argv[1:], main_func=_driver_main)
