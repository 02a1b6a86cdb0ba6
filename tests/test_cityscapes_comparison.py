"""tools/run_cops_comparison.py: stage order, commands, resume / skip logic, settings checks,
the table and its files, with a fake trainer (no training); and its real in-process evaluation
of a saved checkpoint on a tiny synthetic Cityscapes folder (subset of its val split)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
pytest.importorskip("cityscapesscripts", reason="cityscapesscripts is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

REPO = Path(__file__).resolve().parents[1]
CONFIG1 = REPO / "configs" / "Cityscapes-PanopticSegmentation" / "cops_R_18_512x256_pretrain.yaml"


def _tool():
    spec = importlib.util.spec_from_file_location(
        "run_cops_comparison_under_test", REPO / "tools" / "run_cops_comparison.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _tool()


def _opt(cmd, key):
    """The value after the last ``key`` in a command line."""
    i = len(cmd) - 1 - cmd[::-1].index(key)
    return cmd[i + 1]


class FakeTrainer:
    """Stands in for tools/train_net.py: records the commands, writes last_checkpoint and
    (unless told to fail) model_final.pth into OUTPUT_DIR."""

    def __init__(self, fail_at=None, save=None):
        self.commands = []
        self.fail_at = fail_at
        self.save = save

    def __call__(self, cmd, log_path, echo):
        self.commands.append(list(cmd))
        out = _opt(cmd, "OUTPUT_DIR")
        with open(log_path, "a") as f:
            f.write("fake training log line\n")
        Path(out, "last_checkpoint").write_text("model_0000001.pth")
        if self.fail_at == len(self.commands):
            return 3
        if self.save is not None:
            self.save(cmd, os.path.join(out, "model_final.pth"))
        else:
            Path(out, "model_final.pth").write_bytes(b"weights")
        return 0


def _fake_results(pq, miou, ap):
    return {
        "panoptic_seg": {"PQ": pq, "PQ_th": pq - 5, "PQ_st": pq + 3, "SQ": 70.0, "RQ": pq * 1.2},
        "sem_seg": {"mIoU": miou},
        "sem_seg_head": {"mIoU": miou - 1},
        "segm": {"AP": ap, "AP50": 2 * ap},
    }


@pytest.fixture
def fake_eval(monkeypatch):
    calls = []

    def evaluate(name, eval_dir, config_file, opts, weights, dataset, num_images, echo=print):
        calls.append((name, weights, list(opts), dataset, num_images))
        res = {
            "stage1": _fake_results(20.0, 30.0, 3.0),
            "stage2": _fake_results(21.5, 29.0, 4.0),
            "baseline": _fake_results(18.0, 31.0, 5.0),
        }[name]
        return {"results": res, "wall_s": 1.0, "dataset": dataset or "val"}

    monkeypatch.setattr(tool, "evaluate_checkpoint", evaluate)
    return calls


def _stage2_yaml(tmp_path):
    p = tmp_path / "stage2.yaml"
    p.write_text(f"_BASE_: {CONFIG1}\nMODEL:\n  COPS:\n    FULLY_DIFFERENTIABLE: True\n")
    return str(p)


def _args(tmp_path, *extra):
    return tool.build_parser().parse_args(
        ["--output-dir", str(tmp_path / "out"), "--stage1-config", str(CONFIG1),
         "--stage2-config", _stage2_yaml(tmp_path), *extra]
    )


def test_full_run_commands_table_and_files(tmp_path, fake_eval):
    trainer = FakeTrainer()
    args = _args(
        tmp_path, "--seed", "7", "--opts", "SOLVER.IMS_PER_BATCH 4",
        "--stage1-opts", "SOLVER.MAX_ITER 3", "--stage2-opts", "SOLVER.BASE_LR 0.5",
        "--eval-opts", "INPUT.MIN_SIZE_TEST 512", "--eval-images", "5",
    )
    summary = tool.run(args, echo=lambda s: None, runner=trainer)
    out = tmp_path / "out"
    c1, c2 = trainer.commands
    assert "--resume" in c1 and "--resume" in c2
    assert "--no-final-eval" in c1 and "--no-final-eval" in c2  # the tool evaluates by itself
    assert _opt(c1, "--config-file") == str(CONFIG1)
    assert _opt(c1, "SEED") == "7" and _opt(c2, "SEED") == "7"
    assert _opt(c1, "SOLVER.MAX_ITER") == "3" and "SOLVER.MAX_ITER" not in c2
    assert _opt(c2, "SOLVER.BASE_LR") == "0.5" and _opt(c1, "SOLVER.IMS_PER_BATCH") == "4"
    # stage 2 starts from stage 1's final checkpoint
    assert _opt(c2, "MODEL.WEIGHTS") == str(out / "stage1" / "model_final.pth")
    assert _opt(c1, "OUTPUT_DIR") == str(out / "stage1")
    # both evaluations: own stage overrides + eval overrides, same subset size
    (n1, w1, o1, _, k1), (n2, w2, o2, _, k2) = fake_eval
    assert (n1, n2, k1, k2) == ("stage1", "stage2", 5, 5)
    assert w2 == str(out / "stage2" / "model_final.pth")
    assert o1[-2:] == o2[-2:] == ["INPUT.MIN_SIZE_TEST", "512"] and "0.5" in o2 and "0.5" not in o1

    rows = {r["metric"]: r for r in summary["rows"]}
    assert [r["metric"] for r in summary["rows"]] == [t[0] for t in tool.TABLE_ROWS]
    assert rows["PQ"]["stage1"] == 20.0 and rows["PQ"]["diff"] == pytest.approx(1.5)
    assert rows["mIoU"]["diff"] == pytest.approx(-1.0) and rows["AP"]["diff"] == pytest.approx(1.0)
    assert rows["mIoU_head"]["stage2"] == 28.0
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(summary["rows"]))
    md = (out / "comparison.md").read_text()
    assert "| PQ | 20.00 | 21.50 | +1.50 |" in md and "| mIoU | 30.00 | 29.00 | -1.00 |" in md
    assert "stage1 training" in md and "stage2 evaluation" in md

    # re-run: both stages are done -> nothing is trained again
    again = FakeTrainer()
    tool.run(args, echo=lambda s: None, runner=again)
    assert again.commands == []


def test_resume_interrupted_stage_and_refuse_other_settings(tmp_path, fake_eval):
    trainer = FakeTrainer(fail_at=2)  # stage 2 dies after writing a checkpoint
    args = _args(tmp_path, "--seed", "1")
    with pytest.raises(tool.ComparisonError, match="exit code 3.*re-run the same command"):
        tool.run(args, echo=lambda s: None, runner=trainer)
    out = tmp_path / "out"
    assert tool.stage_status(str(out / "stage1")) == "done"
    assert tool.stage_status(str(out / "stage2")) == "partial"
    # same command: stage 1 skipped, stage 2 resumed (with --resume), then both evaluated
    again = FakeTrainer()
    msgs = []
    tool.run(args, echo=msgs.append, runner=again)
    assert len(again.commands) == 1 and _opt(again.commands[0], "OUTPUT_DIR") == str(out / "stage2")
    assert any("[stage2] resuming" in m for m in msgs) and any("[stage1] done before" in m for m in msgs)
    state = json.loads((out / "stage2" / tool.STATE_FILE).read_text())
    assert state["runs"] == 2 and state["wall_s"] >= 0
    # another seed in the same folder: refused, nothing trained
    other = FakeTrainer()
    with pytest.raises(tool.ComparisonError, match="other settings"):
        tool.run(_args(tmp_path, "--seed", "2"), echo=lambda s: None, runner=other)
    assert other.commands == []


def test_baseline_is_trained_with_the_common_overrides_and_gets_two_columns(tmp_path, fake_eval):
    baseline = REPO / "configs" / "Cityscapes-PanopticSegmentation" / "panoptic_deeplab_R_18_512x256.yaml"
    trainer = FakeTrainer()
    args = _args(
        tmp_path, "--seed", "3", "--opts", "SOLVER.IMS_PER_BATCH 4", "--stage1-opts", "SOLVER.MAX_ITER 3",
        "--baseline-config", str(baseline), "--baseline-opts", "SOLVER.MAX_ITER 5",
    )
    summary = tool.run(args, echo=lambda s: None, runner=trainer)
    out = tmp_path / "out"
    c1, c2, cb = trainer.commands
    assert _opt(cb, "--config-file") == str(baseline) and _opt(cb, "SEED") == "3"
    assert _opt(cb, "SOLVER.IMS_PER_BATCH") == "4" and _opt(cb, "SOLVER.MAX_ITER") == "5"
    assert _opt(cb, "OUTPUT_DIR") == str(out / "baseline") and "MODEL.WEIGHTS" not in cb
    assert [c[0] for c in fake_eval] == ["stage1", "stage2", "baseline"]
    assert fake_eval[2][1] == str(out / "baseline" / "model_final.pth")
    rows = {r["metric"]: r for r in summary["rows"]}
    assert rows["PQ"]["baseline"] == 18.0 and rows["PQ"]["lead"] == pytest.approx(3.5)
    assert rows["AP"]["lead"] == pytest.approx(-1.0)
    md = (out / "comparison.md").read_text()
    assert "| PQ | 20.00 | 21.50 | +1.50 | 18.00 | +3.50 |" in md and "baseline training" in md
    with pytest.raises(tool.ComparisonError, match="--baseline-config"):
        tool.run(_args(tmp_path, "--baseline-config", str(tmp_path / "nope.yaml")), runner=trainer)


def test_pretrained_skips_stage1_and_bad_inputs(tmp_path, fake_eval):
    ckpt = tmp_path / "stage1.pth"
    ckpt.write_bytes(b"x")
    trainer = FakeTrainer()
    summary = tool.run(
        _args(tmp_path, "--pretrained", str(ckpt), "--seed", "4"), echo=lambda s: None,
        runner=trainer,
    )
    (cmd,) = trainer.commands
    assert _opt(cmd, "MODEL.WEIGHTS") == str(ckpt) and _opt(cmd, "SEED") == "4"
    assert fake_eval[0][1] == str(ckpt)  # the given checkpoint is evaluated as stage 1
    assert summary["times_s"]["stage1 training"] is None
    assert "| stage1 training | n/a |" in (tmp_path / "out" / "comparison.md").read_text()
    with pytest.raises(tool.ComparisonError, match="does not exist"):
        tool.run(_args(tmp_path, "--pretrained", str(tmp_path / "nope.pth")), runner=trainer)
    with pytest.raises(ValueError, match="KEY VALUE"):
        tool.parse_opts(["SOLVER.MAX_ITER"])
    assert tool.parse_opts(["A 1", "B '(1, 2)'"]) == ["A", "1", "B", "(1, 2)"]
    rows = tool.comparison_rows({"panoptic_seg": {"PQ": 1.0}}, {})
    assert rows[0]["stage1"] == 1.0 and math.isnan(rows[0]["stage2"]) and math.isnan(rows[0]["diff"])


def test_real_evaluation_of_saved_checkpoints_on_tiny_cityscapes(tmp_path):
    """The tool's own evaluation (no fake): checkpoints of a randomly initialised model,
    evaluated on 1 of the 2 val frames of a synthetic Cityscapes folder."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cityscapes_synthetic import register_cityscapes_panoptic, write_cityscapes

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from detectron2_cops.config import add_cops_config

    write_cityscapes(str(tmp_path / "cs"), {"train": 1, "val": 2}, size=(128, 256), seed=5)
    names = register_cityscapes_panoptic(str(tmp_path / "cs"), "_cmp_" + uuid.uuid4().hex[:6])
    small = (
        f"DATASETS.TRAIN \"('{names['train']}',)\" DATASETS.TEST \"('{names['val']}',)\" "
        "INPUT.MIN_SIZE_TEST 128 INPUT.MAX_SIZE_TEST 256 INPUT.CROP.SIZE '(128, 256)' "
        "MODEL.COPS.NUM_THREADS 1"
    )

    def save(cmd, path):
        cfg = get_cfg()
        add_cops_config(cfg)
        cfg.merge_from_file(_opt(cmd, "--config-file"))
        torch.manual_seed(0)
        model = build_model(cfg)
        with torch.no_grad():
            model.calibration.edge_bias.fill_(-5.0)  # few large segments: a fast evaluation
        DetectionCheckpointer(model, save_dir=os.path.dirname(path)).save("model_final")

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = tool.run(
            _args(tmp_path, "--opts", small, "--eval-images", "1"), echo=lambda s: None,
            runner=FakeTrainer(save=save),
        )
    finally:
        torch.set_num_threads(before)
    assert summary["dataset"] == f"{names['val']}_1of2"
    for stage in ("stage1", "stage2"):
        res = summary["results"][stage]
        assert {"panoptic_seg", "sem_seg", "sem_seg_head", "segm"} <= set(res)
        assert 0.0 <= res["panoptic_seg"]["PQ"] <= 100.0 and 0.0 <= res["sem_seg"]["mIoU"] <= 100.0
    # same weights, same model -> same numbers, zero difference
    rows = {r["metric"]: r for r in summary["rows"]}
    assert rows["PQ"]["diff"] == 0.0 and rows["mIoU"]["diff"] == 0.0
    assert (tmp_path / "out" / "stage1" / "eval" / "results.json").is_file()
