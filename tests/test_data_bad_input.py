"""Bad input to detectron2_cops.data gets a clear ValueError and loses nothing:
register_panoptic_subset (never writes into or replaces the base dataset, never deletes a folder
it did not write, integer indices only, nothing written before every check passed), the COPS
target generator (integer ids, iscrowd 0/1, class ids other than ignore_label) and the COCO
panoptic folder loader (an annotation without segments_info names the json file)."""

from __future__ import annotations

import copy
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2_cops.data.target_generator import COPSTargetGenerator

from test_data import SAMPLE, _copy_sample  # noqa: E402  (the sample copy shared with test_data)


def _unique(prefix="cops_bad"):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _snapshot(root: Path) -> dict:
    """Every path under ``root`` with its content (files), link target (links) or None (dirs)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = None
            else:
                out[rel] = p.read_bytes()
    return out


# ============================================================================= target generator
def _toy():
    pan = np.zeros((8, 8), np.int64)
    pan[:4] = 7
    pan[4:, :4] = 3
    pan[4:, 4:] = 9
    segments = [
        {"id": 7, "category_id": 5, "iscrowd": 0},
        {"id": 3, "category_id": 1, "iscrowd": 0},
        {"id": 9, "category_id": 1, "iscrowd": 1},
    ]
    return pan, segments


def _gen(**kw):
    return COPSTargetGenerator(
        thing_ids=[1, 2], class_ids=range(6), edge_distances=[1, 2], stride=2, **kw
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("category_id", 1.7),
        ("category_id", 1.0),
        ("category_id", np.float64(1.0)),
        ("category_id", "1"),
        ("category_id", True),
        ("id", 3.0),
        ("id", "3"),
        ("id", np.float32(3.0)),
    ],
)
def test_generator_refuses_non_integer_ids(key, value):
    pan, segments = _toy()
    bad = copy.deepcopy(segments)
    bad[1][key] = value
    with pytest.raises(ValueError) as e:
        _gen()(pan, bad)
    msg = str(e.value)
    assert "segments_info[1]" in msg and key in msg and repr(value) in msg and "integer" in msg


def test_generator_segment_id_1_9_does_not_match_png_id_1():
    pan = np.zeros((4, 4), np.int64)
    pan[:2] = 1
    with pytest.raises(ValueError, match=r"has id 1\.9"):
        _gen()(pan, [{"id": 1.9, "category_id": 5, "iscrowd": 0}])


@pytest.mark.parametrize("value", ["0", "false", "1", 2, -1, 0.5, 1.0, None, [0]])
def test_generator_refuses_bad_iscrowd(value):
    pan, segments = _toy()
    bad = copy.deepcopy(segments)
    bad[1]["iscrowd"] = value
    with pytest.raises(ValueError) as e:
        _gen()(pan, bad)
    assert "segments_info[1]" in str(e.value) and "iscrowd" in str(e.value)
    assert "0 or 1" in str(e.value)


def test_generator_accepts_numpy_ints_and_bools_exactly_as_python_ints():
    pan, segments = _toy()
    ref = _gen()(pan, segments)
    variants = [
        [dict(s, id=np.int64(s["id"]), category_id=np.int32(s["category_id"])) for s in segments],
        [dict(s, iscrowd=bool(s["iscrowd"])) for s in segments],
        [dict(s, iscrowd=np.bool_(s["iscrowd"])) for s in segments],
        [dict(s, iscrowd=np.uint8(s["iscrowd"])) for s in segments],
        [{k: v for k, v in s.items() if k != "iscrowd" or v} for s in segments],  # 0 by default
    ]
    for segs in variants:
        out = _gen()(pan, segs)
        assert out.keys() == ref.keys()
        for k, v in ref.items():
            if isinstance(v, list):
                assert all(torch.equal(a, b) for a, b in zip(v, out[k])), k
            else:
                assert torch.equal(v, out[k]), k
    assert ref["crowd_ids"].tolist() == [1002]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(thing_ids=[1], class_ids=[0, 1, 255]), "class_ids contains ignore_label 255"),
        (dict(thing_ids=[1, 7], class_ids=[0, 1, 7], ignore_label=7), "ignore_label 7"),
        (dict(thing_ids=[255]), "thing_ids contains ignore_label 255"),
        (dict(thing_ids=[1], class_ids=[0, 1.5]), "class_ids must be integer"),
        (dict(thing_ids=[1.0], class_ids=[0, 1]), "thing_ids must be integer"),
        (dict(thing_ids=[True], class_ids=[0, 1]), "thing_ids must be integer"),
        (dict(thing_ids=[1], class_ids=["0", "1"]), "class_ids must be integer"),
        (dict(thing_ids=[1], class_ids="01"), "class_ids must be an iterable"),
        (dict(thing_ids=[1], class_ids=[-1, 1]), "class_ids must be >= 0"),
        (dict(thing_ids=[1], ignore_label=255.0), "ignore_label must be an integer"),
    ],
)
def test_generator_refuses_bad_class_ids(kwargs, match):
    with pytest.raises(ValueError, match=match):
        COPSTargetGenerator(**kwargs)


def test_generator_numpy_class_ids_accepted():
    pan, segments = _toy()
    gen = COPSTargetGenerator(
        thing_ids=np.array([1, 2]), class_ids=np.arange(6), edge_distances=[1, 2], stride=2
    )
    assert gen.class_ids == frozenset(range(6)) and gen.thing_ids == frozenset({1, 2})
    assert torch.equal(gen(pan, segments)["panoptic_ids"], _gen()(pan, segments)["panoptic_ids"])


# ============================================================================= Detectron2 side
@pytest.fixture(scope="module")
def d2():
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    if not (SAMPLE / "panoptic.json").is_file():
        pytest.fail(f"the bundled COCO panoptic sample is missing at {SAMPLE}")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from detectron2_cops.data import datasets as cops_datasets
    from detectron2_cops.data import subsets

    return DatasetCatalog, MetadataCatalog, cops_datasets, subsets


@pytest.fixture
def coco_base(d2, tmp_path):
    """A registered copy of the sample: (name, folder)."""
    _, _, cops_datasets, _ = d2
    name = _unique("cops_base")
    folder = _copy_sample(tmp_path, name)
    cops_datasets.register_coco_panoptic_folder(name, str(tmp_path))
    return name, folder


# ----------------------------------------------------------------------------- loader
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda ann: ann.pop("segments_info"), "has no 'segments_info'"),
        (lambda ann: ann.pop("file_name"), "has no 'file_name'"),
        (lambda ann: ann.update(segments_info={"id": 1}), "'segments_info' must be a list"),
        (lambda ann: ann["segments_info"][2].pop("id"), r"segments_info\[2\] must be a dict"),
    ],
)
def test_loader_malformed_annotation_names_json_and_image(d2, tmp_path, edit, match):
    DatasetCatalog, _, cops_datasets, _ = d2
    name = _unique()
    folder = _copy_sample(tmp_path, name, lambda _, data: edit(data["annotations"][1]))
    cops_datasets.register_coco_panoptic_folder(name, str(tmp_path))
    with pytest.raises(ValueError, match=match) as e:
        DatasetCatalog.get(name)
    msg = str(e.value)
    assert str(folder / "panoptic.json") in msg and "annotations[1]" in msg and "439180" in msg


def test_loader_annotation_not_a_dict(d2, tmp_path):
    DatasetCatalog, _, cops_datasets, _ = d2
    name = _unique()
    folder = _copy_sample(tmp_path, name, lambda _, data: data["annotations"].append([1, 2]))
    cops_datasets.register_coco_panoptic_folder(name, str(tmp_path))
    with pytest.raises(ValueError, match=r"annotations\[2\] must be a dict") as e:
        DatasetCatalog.get(name)
    assert str(folder / "panoptic.json") in str(e.value)


# ----------------------------------------------------------------------------- subsets
def test_subset_refuses_the_base_datasets_own_folders(d2, coco_base, tmp_path):
    DatasetCatalog, _, _, subsets = d2
    base, folder = coco_base
    before = _snapshot(tmp_path)
    link = tmp_path / "link_to_base"
    os.symlink(folder, link)
    before_link = _snapshot(tmp_path)
    targets = [
        folder,  # the audit's case: would overwrite the base panoptic.json
        folder / "images",
        folder / "panoptic",
        folder / "panoptic" / "sub",
        tmp_path,  # contains the base folder
        link,  # the base folder through a link
    ]
    for target in targets:
        sub = _unique("cops_sub")
        with pytest.raises(ValueError, match="base dataset") as e:
            subsets.register_panoptic_subset(base, sub, [0], str(target))
        assert str(target) in str(e.value) and base in str(e.value)
        assert sub not in DatasetCatalog.list()
    assert _snapshot(tmp_path) == before_link
    del before_link[link.name]
    assert before_link == before
    assert len(json.loads((folder / "panoptic.json").read_text())["annotations"]) == 2
    assert len(DatasetCatalog.get(base)) == 2


def test_subset_refuses_panoptic_json_linked_to_the_base_json(d2, coco_base, tmp_path):
    _, _, _, subsets = d2
    base, folder = coco_base
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(folder / "panoptic.json", out / "panoptic.json")
    before = (folder / "panoptic.json").read_bytes()
    with pytest.raises(ValueError, match="base dataset") as e:
        subsets.register_panoptic_subset(base, _unique("cops_sub"), [0], str(out))
    assert f"'{out / 'panoptic.json'}'" in str(e.value)
    assert str(folder / "panoptic.json") in str(e.value)  # the real path it resolves to
    assert (folder / "panoptic.json").read_bytes() == before
    assert os.path.islink(out / "panoptic.json")


def test_subset_name_equal_to_base_or_registered_elsewhere(d2, coco_base, tmp_path):
    DatasetCatalog, MetadataCatalog, cops_datasets, subsets = d2
    base, _ = coco_base
    with pytest.raises(ValueError, match="base dataset's name"):
        subsets.register_panoptic_subset(base, base, [0], str(tmp_path / "a"))
    assert len(DatasetCatalog.get(base)) == 2  # still the base (old code: RecursionError)
    other = _unique("cops_other")
    _copy_sample(tmp_path, other)
    cops_datasets.register_coco_panoptic_folder(other, str(tmp_path))
    with pytest.raises(ValueError, match=f"'{other}' is already registered"):
        subsets.register_panoptic_subset(base, other, [0], str(tmp_path / "a"))
    assert len(DatasetCatalog.get(other)) == 2
    assert "subset_of" not in MetadataCatalog.get(other).as_dict()
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "indices, match",
    [
        ([0.7], "integers"),
        ([1.0], "integers"),
        ([True], "integers"),
        (["0"], "integers"),
        (np.array([0.0]), "integers"),
        ("0", "sequence"),
        (0, "sequence"),
        ([], "empty"),
        ([0, 0], "distinct"),
        ([2], "out of range"),
        ([-1], "out of range"),
    ],
)
def test_subset_refuses_bad_indices_and_writes_nothing(d2, coco_base, tmp_path, indices, match):
    DatasetCatalog, _, _, subsets = d2
    base, _ = coco_base
    sub = _unique("cops_sub")
    with pytest.raises(ValueError, match=match) as e:
        subsets.register_panoptic_subset(base, sub, indices, str(tmp_path / "out"))
    assert base in str(e.value)
    assert not (tmp_path / "out").exists() and sub not in DatasetCatalog.list()


def test_subset_valid_use_and_reregistration(d2, coco_base, tmp_path):
    DatasetCatalog, MetadataCatalog, _, subsets = d2
    base, _ = coco_base
    sub = _unique("cops_sub")
    out = tmp_path / "out"
    assert subsets.register_panoptic_subset(base, sub, np.array([1]), str(out)) == sub
    assert [d["image_id"] for d in DatasetCatalog.get(sub)] == [439180]
    assert MetadataCatalog.get(sub).panoptic_json == str(out / "panoptic.json")
    # re-registering the subset (another image, same folder) replaces it, as documented
    subsets.register_panoptic_subset(base, sub, [np.int64(0)], str(out))
    assert [d["image_id"] for d in DatasetCatalog.get(sub)] == [142238]
    anns = json.loads((out / "panoptic.json").read_text())["annotations"]
    assert [a["image_id"] for a in anns] == [142238]
    # another subset may not take over the folder of a registered one (its json would change)
    with pytest.raises(ValueError, match=f"registered dataset '{sub}'"):
        subsets.register_panoptic_subset(base, _unique("cops_sub"), [1], str(out))
    assert json.loads((out / "panoptic.json").read_text())["annotations"] == anns
    # a subset of the subset: then the first one cannot be replaced by a different subset
    subsub = subsets.register_panoptic_subset(sub, _unique("cops_subsub"), [0], str(tmp_path / "s"))
    with pytest.raises(ValueError, match="is the base dataset of the subsets"):
        subsets.register_panoptic_subset(base, sub, [1], str(out))
    subsets.register_panoptic_subset(base, sub, [0], str(out))  # identical: fine
    assert [d["image_id"] for d in DatasetCatalog.get(subsub)] == [142238]
    with pytest.raises(ValueError, match="base dataset"):  # the subset's own folder is protected
        subsets.register_panoptic_subset(sub, _unique("cops_sub"), [0], str(out))


# ------------------------------------------------------------------ subsets with Cityscapes gt
@pytest.fixture
def city_base(d2, tmp_path):
    """A registered Cityscapes-like base dataset (metadata gt_dir) with two frames."""
    DatasetCatalog, MetadataCatalog, _, _ = d2
    root = tmp_path / "cs"
    stems = ["aachen_000000_000019", "bonn_000001_000019"]
    records, annotations = [], []
    for stem in stems:
        city = stem.split("_")[0]
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        for suffix in ("_gtFine_instanceIds.png", "_gtFine_labelIds.png"):
            (root / "gtFine" / "val" / city / (stem + suffix)).write_bytes(b"png")
        records.append(
            {
                "file_name": str(root / "leftImg8bit" / "val" / city / (stem + "_leftImg8bit.png")),
                "image_id": stem,
                "pan_seg_file_name": str(root / "gtFine" / "pan" / (stem + "_gtFine_panoptic.png")),
                "segments_info": [],
            }
        )
        annotations.append(
            {"image_id": stem, "file_name": stem + "_gtFine_panoptic.png", "segments_info": []}
        )
    (root / "gtFine" / "pan").mkdir()
    pan_json = root / "gtFine" / "pan.json"
    pan_json.write_text(json.dumps({"annotations": annotations, "categories": []}))
    name = _unique("cops_city")
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).set(
        panoptic_json=str(pan_json),
        panoptic_root=str(root / "gtFine" / "pan"),
        image_root=str(root / "leftImg8bit" / "val"),
        gt_dir=str(root / "gtFine" / "val"),
    )
    yield name, root, stems
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_subset_never_deletes_a_gt_folder_it_did_not_write(d2, city_base, tmp_path):
    DatasetCatalog, _, _, subsets = d2
    base, _, _ = city_base
    out = tmp_path / "out"
    (out / "gt" / "mine").mkdir(parents=True)
    (out / "gt" / "mine" / "precious.txt").write_text("keep me")
    before = _snapshot(out)
    sub = _unique("cops_sub")
    with pytest.raises(ValueError, match="not written by register_panoptic_subset") as e:
        subsets.register_panoptic_subset(base, sub, [0], str(out))
    assert str(out / "gt") in str(e.value)
    assert _snapshot(out) == before  # nothing deleted, no panoptic.json written
    assert sub not in DatasetCatalog.list()
    (out / "gt" / "mine" / "precious.txt").unlink()
    (out / "gt" / "mine").rmdir()
    os.rmdir(out / "gt")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / subsets.GT_MARKER).write_text("")  # even with a marker in it
    os.symlink(tmp_path / "elsewhere", out / "gt")  # a link is not followed or deleted
    with pytest.raises(ValueError, match="not a folder written by register_panoptic_subset"):
        subsets.register_panoptic_subset(base, sub, [0], str(out))
    assert os.path.islink(out / "gt") and not (out / "panoptic.json").exists()
    assert os.listdir(tmp_path / "elsewhere") == [subsets.GT_MARKER]


def test_subset_replaces_its_own_gt_links(d2, city_base, tmp_path):
    DatasetCatalog, MetadataCatalog, _, subsets = d2
    base, root, stems = city_base
    out = tmp_path / "out"
    sub = subsets.register_panoptic_subset(base, _unique("cops_sub"), [0], str(out))
    gt = Path(MetadataCatalog.get(sub).gt_dir)
    assert gt == out / "gt" and (gt / subsets.GT_MARKER).is_file()
    assert sorted(p.name for p in gt.rglob("*_instanceIds.png")) == [
        stems[0] + "_gtFine_instanceIds.png"
    ]
    subsets.register_panoptic_subset(base, sub, [1], str(out))
    links = sorted(p.relative_to(gt) for p in gt.rglob("*.png"))
    assert links == [
        Path("bonn") / (stems[1] + "_gtFine_instanceIds.png"),
        Path("bonn") / (stems[1] + "_gtFine_labelIds.png"),
    ]
    assert all(os.path.islink(gt / p) for p in links)
    assert (root / "gtFine" / "val" / "aachen" / (stems[0] + "_gtFine_instanceIds.png")).is_file()
    assert [d["image_id"] for d in DatasetCatalog.get(sub)] == [stems[1]]


def test_subset_missing_cityscapes_gt_writes_nothing(d2, city_base, tmp_path):
    _, _, _, subsets = d2
    base, root, stems = city_base
    (root / "gtFine" / "val" / "bonn" / (stems[1] + "_gtFine_instanceIds.png")).unlink()
    with pytest.raises(FileNotFoundError, match=stems[1]):
        subsets.register_panoptic_subset(base, _unique("cops_sub"), [0, 1], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_subset_refuses_folder_inside_cityscapes_gt_dir(d2, city_base):
    _, _, _, subsets = d2
    base, root, _ = city_base
    before = _snapshot(root)
    with pytest.raises(ValueError, match="gt_dir"):
        subsets.register_panoptic_subset(
            base, _unique("cops_sub"), [0], str(root / "gtFine" / "val" / "x")
        )
    with pytest.raises(ValueError, match="base dataset"):
        subsets.register_panoptic_subset(base, _unique("cops_sub"), [0], str(root / "gtFine"))
    assert _snapshot(root) == before
