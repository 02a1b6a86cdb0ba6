"""Tests of tools/convert_cops_checkpoint.py against the authors' parameter names and shapes.

``tests/data/cops_original_parameters.json`` lists every tensor of the authors' COPS network
(Cityscapes and COCO) in the layout of their released checkpoints, read from their model by
``dev/check_cops_parity.py --write-fixture`` (which also shows numerical parity; it needs
their code and is not run here). A synthetic checkpoint with exactly those names and shapes must
convert into a state dict that loads strictly into the model our paper configs build.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

REPO = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((REPO / "tests" / "data" / "cops_original_parameters.json").read_text())
DATASETS = ["Cityscapes", "COCO"]
# Their config values of the constants (affinityNet/configs, panoptic_affinity/config.py).
PIXEL_MEAN = [123.675, 116.280, 103.530]
PIXEL_STD = [58.395, 57.120, 57.375]
AREAS = {"Cityscapes": (2048, 200), "COCO": (4096, 200)}  # (STUFF_AREA, INSTANCE_AREA)


def load_converter():
    spec = importlib.util.spec_from_file_location("convert_cops_checkpoint", REPO / "tools" / "convert_cops_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conv = load_converter()


def our_name(theirs: str) -> str:
    """The expected name of one of their tensors (written independently of the converter)."""
    name = theirs.replace("AFF_EMBED_head.", "affinity_head.", 1)
    name = name.replace("affinity_head.affinity_head.", "affinity_head.head.", 1)
    parts = name.split(".")
    if parts[:2] == ["affinity_head", "classifiers"]:
        parts[3] = {"0": "convs.0", "1": "convs.1", "2": "predictor"}[parts[3]]
        name = ".".join(parts)
    return name


def synthetic_checkpoint(dataset: str, seed: int = 0, thing_ids=None):
    """Tensors with their names and shapes, each filled with its own value (so that a mix-up of
    two tensors shows; cheaper than random fills of 25M values); constants with their config's
    values."""
    sd = {}
    for i, (name, shape) in enumerate(FIXTURE[dataset]["parameters"].items()):
        sd[name] = torch.full(shape, (-1.0) ** i * (seed + 1 + 0.001 * i))
    sd["pixel_mean"] = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    sd["pixel_std"] = torch.tensor(PIXEL_STD).view(3, 1, 1)
    stuff, inst = AREAS[dataset]
    n = sd["amwc_layer.training_per_class_areas"].numel()
    things = set(thing_ids or [])
    sd["amwc_layer.training_per_class_areas"] = torch.tensor(
        [float(inst if i in things else stuff) for i in range(n)]
    )
    return sd


# ---------------------------------------------------------------------------- without Detectron2
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_tensor_mapped_and_calibration_signs(dataset):
    theirs = synthetic_checkpoint(dataset)
    ours, report = conv.convert_state_dict(theirs)
    calib = [k for k in theirs if k.startswith(("amwc_layer.seg_cost_weights.", "amwc_layer.edge_costs_weights."))]
    constants = ["pixel_mean", "pixel_std", "amwc_layer.training_per_class_areas"]
    plain = [k for k in theirs if k not in calib and k not in constants]
    # Full coverage: every tensor of theirs is mapped, a calibration scalar or a checked constant.
    assert report["num_input_tensors"] == len(theirs)
    assert report["mapped"] == len(plain) and report["calibration"] == len(calib)
    assert sorted(report["constants"]) == sorted(constants)
    for k in plain:
        assert torch.equal(ours[our_name(k)], theirs[k]), k
    D = report["num_edge_distances"]
    assert D == {"Cityscapes": 5, "COCO": 4}[dataset]
    # theirs: c = -x * w0 + w1 ; ours: c = -(a x + b)
    x = torch.randn(7)
    seg = theirs["amwc_layer.seg_cost_weights.0"], theirs["amwc_layer.seg_cost_weights.1"]
    assert ours["calibration.semantic_weight"].shape == ()
    assert torch.allclose(-(ours["calibration.semantic_weight"] * x + ours["calibration.semantic_bias"]), -x * seg[0] + seg[1])
    for i in range(D):
        w0, w1 = theirs[f"amwc_layer.edge_costs_weights.{2 * i}"], theirs[f"amwc_layer.edge_costs_weights.{2 * i + 1}"]
        ours_c = -(ours["calibration.edge_weight"][i].abs() * x + ours["calibration.edge_bias"][i])
        assert torch.allclose(ours_c, -x * torch.abs(w0) + w1)
    # Their frozen BN has no counter; one is added per BatchNorm, and reported.
    bns = [k for k in theirs if k.endswith(".running_var")]
    assert report["bn_counters_added"] == len(bns)
    assert len(ours) == len(plain) + 4 + len(bns)
    ours2, report2 = conv.convert_state_dict(theirs, add_bn_counters=False)
    assert report2["bn_counters_added"] == 0 and not any(k.endswith("num_batches_tracked") for k in ours2)


def test_unmapped_missing_and_malformed_tensors_are_errors():
    theirs = synthetic_checkpoint("COCO")
    bad = dict(theirs, **{"AFF_EMBED_head.extra.weight": torch.zeros(1), "amwc_layer.other": torch.zeros(1)})
    with pytest.raises(conv.ConversionError, match=r"(?s)2 tensor.*AFF_EMBED_head\.extra\.weight.*amwc_layer\.other"):
        conv.convert_state_dict(bad)
    missing = {k: v for k, v in theirs.items() if k != "amwc_layer.seg_cost_weights.1"}
    with pytest.raises(conv.ConversionError, match=r"seg_cost_weights\.1"):
        conv.convert_state_dict(missing)
    missing = {k: v for k, v in theirs.items() if not k.startswith("amwc_layer.edge_costs_weights.7")}
    with pytest.raises(conv.ConversionError, match="0 .. 2D-1"):
        conv.convert_state_dict(missing)
    missing = {k: v for k, v in theirs.items() if not k.startswith("amwc_layer.edge_costs_weights.")}
    with pytest.raises(conv.ConversionError, match="edge_costs_weights.0"):
        conv.convert_state_dict(missing)
    with pytest.raises(conv.ConversionError, match=r"shape \[1\]"):
        conv.convert_state_dict(dict(theirs, **{"amwc_layer.seg_cost_weights.0": torch.ones(2)}))
    with pytest.raises(conv.ConversionError, match="not finite"):
        conv.convert_state_dict(dict(theirs, **{"amwc_layer.edge_costs_weights.0": torch.tensor([float("nan")])}))
    with pytest.raises(conv.ConversionError, match="not tensors"):
        conv.convert_state_dict(dict(theirs, iteration=3))
    with pytest.raises(conv.ConversionError, match="empty"):
        conv.convert_state_dict({})
    # A network weight with NaN (a corrupt or diverged checkpoint) is named, not converted.
    key = next(k for k in theirs if k.startswith("backbone.") and theirs[k].is_floating_point())
    nan = theirs[key].clone()
    nan.view(-1)[0] = float("nan")
    with pytest.raises(conv.ConversionError, match=rf"(?s)not finite \(NaN or inf\):.*{key}"):
        conv.convert_state_dict(dict(theirs, **{key: nan}))


def test_unreadable_input_is_a_conversion_error(tmp_path, capsys):
    with pytest.raises(conv.ConversionError, match="no such file"):
        conv.load_their_state_dict(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(conv.ConversionError, match="not a readable PyTorch checkpoint"):
        conv.load_their_state_dict(str(junk))
    assert conv.main([str(junk), str(tmp_path / "out.pth")]) == 1  # the CLI reports it, exit 1
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


# ---------------------------------------------------------------------------- with Detectron2
def _cfg(dataset):
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    from detectron2.config import get_cfg

    from detectron2_cops.config import add_cops_config

    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / f"{dataset}-PanopticSegmentation" / "cops_R_52_fully_differentiable.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def _thing_ids(cfg):
    from detectron2.data import MetadataCatalog

    return sorted(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_dataset_id_to_contiguous_id.values())


@pytest.mark.parametrize("dataset", DATASETS)
def test_converted_checkpoint_loads_strictly_into_our_model(dataset, tmp_path):
    cfg = _cfg(dataset)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    theirs = synthetic_checkpoint(dataset, thing_ids=_thing_ids(cfg))
    src, dst = tmp_path / "theirs.pth", tmp_path / "ours.pth"
    torch.save({"model": theirs, "iteration": 2999, "optimizer": {}}, src)
    assert conv.main([str(src), str(dst), "--config-file", str(REPO / "configs" / f"{dataset}-PanopticSegmentation" / "cops_R_52_fully_differentiable.yaml")]) == 0
    saved = torch.load(dst, weights_only=False)
    model = build_model(cfg)
    expected = model.state_dict()
    assert set(saved["model"]) == set(expected)
    for k, v in expected.items():
        assert tuple(saved["model"][k].shape) == tuple(v.shape), k
    # What a user does: MODEL.WEIGHTS through Detectron2's checkpointer; then every tensor holds
    # the checkpoint's value, and each of theirs sits under its expected name.
    DetectionCheckpointer(model).load(str(dst))
    state = model.state_dict()
    for k, v in state.items():
        assert torch.equal(v, saved["model"][k]), k
    for k, v in theirs.items():
        if k.startswith(("backbone.", "sem_seg_head.", "AFF_EMBED_head.")):
            assert torch.equal(state[our_name(k)], v), k


def test_cli_uses_the_config_on_either_side_of_the_file_names(tmp_path, capsys):
    cfg = _cfg("Cityscapes")
    theirs = synthetic_checkpoint("Cityscapes", thing_ids=_thing_ids(cfg))
    src = tmp_path / "theirs.pth"
    torch.save({"model": theirs}, src)
    yaml = str(REPO / "configs" / "Cityscapes-PanopticSegmentation" / "cops_R_52_fully_differentiable.yaml")
    # An override makes a constant differ from the checkpoint's: the config checks must run (exit
    # 1, nothing written) with --config-file after the file names (the README's order) or before.
    override = ["MODEL.COPS.STUFF_AREA", "4096"]
    for argv in (
        [str(src), str(tmp_path / "a.pth"), "--config-file", yaml] + override,
        ["--config-file", yaml, str(src), str(tmp_path / "b.pth")] + override,
    ):
        assert conv.main(argv) == 1
        assert "STUFF_AREA" in capsys.readouterr().err
    assert not (tmp_path / "a.pth").exists() and not (tmp_path / "b.pth").exists()
    # Overrides without a config, or an unpaired key, are refused instead of being ignored.
    for argv in ([str(src), str(tmp_path / "c.pth")] + override,
                 [str(src), str(tmp_path / "c.pth"), "--config-file", yaml, override[0]]):
        with pytest.raises(SystemExit) as e:
            conv.main(argv)
        assert e.value.code == 2
    assert "KEY VALUE pairs" in capsys.readouterr().err
    assert not (tmp_path / "c.pth").exists()


def test_config_checks_name_the_problem(tmp_path):
    cfg = _cfg("Cityscapes")
    theirs = synthetic_checkpoint("Cityscapes", thing_ids=_thing_ids(cfg))
    ours, report = conv.convert_state_dict(theirs)
    # The old grouped predictor shape (or any shape change) is reported per tensor.
    broken = dict(ours, **{"affinity_head.classifiers.1.predictor.weight": torch.zeros(2, 32, 1, 1)})
    with pytest.raises(conv.ConversionError, match=r"classifiers\.1\.predictor\.weight: checkpoint \[2, 32, 1, 1\]"):
        conv.check_against_config(broken, report, cfg)
    # A config with the depthwise-separable semantic head cannot take their weights.
    cfg2 = cfg.clone()
    cfg2.MODEL.SEM_SEG_HEAD.HEAD_USE_DEPTHWISE_SEPARABLE_CONV = True
    with pytest.raises(conv.ConversionError, match=r"(?s)not in the checkpoint.*sem_seg_head\.head\.depthwise"):
        conv.check_against_config(ours, report, cfg2)
    # COCO weights into a Cityscapes model: class count and distances differ.
    coco, coco_report = conv.convert_state_dict(synthetic_checkpoint("COCO"))
    with pytest.raises(conv.ConversionError, match="shape mismatch"):
        conv.check_against_config(coco, coco_report, cfg)
    # Constants that differ from the config.
    cfg3 = cfg.clone()
    cfg3.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0]
    cfg3.MODEL.COPS.STUFF_AREA = 4096
    with pytest.raises(conv.ConversionError, match=r"(?s)pixel_mean.*STUFF_AREA"):
        conv.check_against_config(ours, report, cfg3)
    # The CLI reports the error and exits with 1.
    src = tmp_path / "bad.pth"
    torch.save({"model": dict(theirs, **{"sem_seg_head.extra.weight": torch.zeros(1)})}, src)
    assert conv.main([str(src), str(tmp_path / "out.pth")]) == 1
    assert not (tmp_path / "out.pth").exists()
