"""Tests of the optimizer (detectron2_cops.optimizer): the authors' stage-2 per-part learning
rates (LEARNING_RATE_REDUCTION_PER_STAGE groups) on a built model, and Detectron2's default
groups otherwise."""
from __future__ import annotations

import logging

import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from torch import nn  # noqa: E402

from detectron2.modeling import build_model  # noqa: E402

from detectron2_cops.optimizer import build_optimizer, build_param_groups, match_pattern  # noqa: E402

from conftest import tiny_cfg  # noqa: E402


def _lr_of(optimizer):
    return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_authors_stage2_learning_rates_on_a_built_model(synth_dataset, caplog):
    cfg = tiny_cfg(synth_dataset, fully_differentiable=True)
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.0  # as the stage-2 YAMLs (authors: 0 in every group)
    model = build_model(cfg)
    with caplog.at_level(logging.INFO, logger="detectron2_cops.optimizer"):
        opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.Adam)
    lr = _lr_of(opt)
    base = 1e-3
    # the authors' train_net.py: head /40, predictor /20, affinity head /60, classifier bodies
    # /40, last layers /20, calibration at the base rate; backbone and decoders frozen
    expected = [
        ("sem_seg_head.head.", base / 40),
        ("sem_seg_head.predictor.", base / 20),
        ("calibration.semantic_", base),
        ("affinity_head.head.", base / 60),
        ("affinity_head.classifiers.", None),  # checked below (convs / predictor)
        ("calibration.edge_", base),
    ]
    seen = {k: 0 for k, _ in expected}
    for name, p in model.named_parameters():
        prefix = next((k for k, _ in expected if name.startswith(k)), None)
        if prefix is None:
            assert name.startswith(("backbone.", "sem_seg_head.decoder.", "affinity_head.decoder.")), name
            assert not p.requires_grad and id(p) not in lr, name
            continue
        seen[prefix] += 1
        assert p.requires_grad, name
        want = dict(expected)[prefix]
        if want is None:
            want = base / 20 if ".predictor." in name else base / 40
            assert ".predictor." in name or ".convs." in name, name
        assert lr[id(p)] == pytest.approx(want, rel=1e-12), name
    assert all(v > 0 for v in seen.values()), seen
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    lines = [r.getMessage() for r in caplog.records if "Stage-2 LR group" in r.getMessage()]
    assert len(lines) == 7
    assert any("'affinity_head.head'" in m and "lr 1.66667e-05" in m for m in lines), lines


def test_pretraining_and_empty_patterns_use_detectron2_default_groups(synth_dataset):
    cfg = tiny_cfg(synth_dataset, fully_differentiable=False)
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert {g["lr"] for g in opt.param_groups} == {cfg.SOLVER.BASE_LR}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    cfg = tiny_cfg(synth_dataset, fully_differentiable=True)
    cfg.SOLVER.LR_GROUP_PATTERNS = []
    cfg.SOLVER.LR_GROUP_STAGES = []
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert {g["lr"] for g in opt.param_groups} == {cfg.SOLVER.BASE_LR}
    assert model.backbone.stem.conv1.weight.requires_grad


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
        self.ab = nn.Linear(2, 2)
        self.c = nn.Linear(2, 2)


def test_param_groups_rules_and_errors():
    assert match_pattern("a.0.weight", "a") and not match_pattern("ab.weight", "a")
    assert match_pattern("x.classifiers.3.convs.0.weight", "x.classifiers.*.convs")
    m = _Toy()
    groups, summary = build_param_groups(m, base_lr=1.0, patterns=["a", "ab"], stages=[2, 0],
                                         reduction_per_stage=10.0, weight_decay=0.5, weight_decay_bias=0.0,
                                         weight_decay_norm=0.1, freeze_others=False)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_param[id(m.a[0].weight)] == (1.0 / 20, 0.5)
    assert by_param[id(m.a[1].weight)] == (1.0 / 20, 0.1)  # norm layer: WEIGHT_DECAY_NORM
    assert by_param[id(m.a[0].bias)] == (1.0 / 20, 0.0)  # bias: WEIGHT_DECAY_BIAS
    assert by_param[id(m.ab.weight)] == (1.0, 0.5)
    assert by_param[id(m.c.weight)] == (1.0, 0.5) and m.c.weight.requires_grad  # "<other>"
    assert [s["pattern"] for s in summary] == ["a", "ab", "<other>"]
    assert summary[0]["num_params"] == 2 + 2 + 2 + 2
    build_param_groups(m, base_lr=1.0, patterns=["a"], stages=[1], reduction_per_stage=10.0)
    assert not m.c.weight.requires_grad and not m.ab.bias.requires_grad  # frozen (freeze_others)
    for kwargs, match in (
        (dict(patterns=["a"], stages=[1, 2]), "same length"),
        (dict(patterns=["zzz"], stages=[1]), "'zzz' matches no parameter"),
        (dict(patterns=[""], stages=[1]), "'' matches no parameter"),
        (dict(patterns=["a", "a.0"], stages=[1, 2]), "two SOLVER.LR_GROUP_PATTERNS"),
        (dict(patterns=["a"], stages=[-1]), r"LR_GROUP_STAGES\[0\] must be >= 0"),
        (dict(patterns=["a"], stages=[float("nan")]), r"LR_GROUP_STAGES\[0\] must be finite"),  # trained at BASE_LR
        (dict(patterns=["a"], stages=[float("inf")]), r"LR_GROUP_STAGES\[0\] must be finite"),  # lr 0
        (dict(patterns=["a"], stages=[1], base_lr=float("nan")), "BASE_LR must be finite"),
        (dict(patterns=["a"], stages=[1], base_lr=0.0), "BASE_LR must be > 0"),
        (dict(patterns=["a"], stages=[1], reduction_per_stage=float("inf")), "LR_REDUCTION_PER_STAGE must be finite"),
    ):
        kwargs = {"base_lr": 1.0, "reduction_per_stage": 20.0, **kwargs}
        with pytest.raises(ValueError, match=match):
            build_param_groups(_Toy(), **kwargs)


@pytest.mark.parametrize("fully_differentiable", [False, True])
def test_a_model_without_trainable_parameters_is_refused(synth_dataset, fully_differentiable):
    cfg = tiny_cfg(synth_dataset, fully_differentiable=fully_differentiable)
    model = build_model(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(cfg, model)
