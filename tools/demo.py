#!/usr/bin/env python3
"""Run a trained COPS model on images and save the panoptic segmentation drawn over each image.

    python tools/demo.py \\
        --config-file configs/Cityscapes-PanopticSegmentation/cops_R_52_fully_differentiable.yaml \\
        --input frames/ "more/*.jpg" one.png --output out/ \\
        --opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

Writes ``<output>/<image stem>_panoptic.png`` per input image (Detectron2's ``Visualizer``,
``draw_panoptic_seg``). Unreadable images are skipped with a warning naming the file, and the
script then exits with status 1; inputs that match no file are an error before anything runs.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

logger = logging.getLogger("detectron2_cops.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="COPS panoptic segmentation demo")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a YAML config")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="image paths, folders (their images, not recursive) or glob patterns ('imgs/*.jpg')",
    )
    parser.add_argument("--output", required=True, help="folder for the <stem>_panoptic.png files")
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu",
    )
    parser.add_argument(
        "overrides",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as trailing KEY VALUE pairs (as in train_net.py), applied after --opts",
    )
    return parser


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Expand image paths, folders and glob patterns into a sorted-per-entry, duplicate-free list.

    Folders contribute the files directly inside them whose extension is in
    ``IMAGE_EXTENSIONS`` (case-insensitive); glob patterns (``*``, ``?``, ``[``) are expanded
    with ``glob.glob`` (``**`` recursive); plain paths must be existing files (any extension).

    Raises:
        ValueError: an entry that is neither an existing file, a folder with images nor a pattern
            matching at least one file; or no image at all.
    """
    files: List[str] = []
    for entry in inputs:
        path = os.path.expanduser(entry)
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, f)
                for f in os.listdir(path)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, f))
            )
            if not found:
                raise ValueError(f"--input folder {entry!r} contains no image {IMAGE_EXTENSIONS}")
        elif os.path.isfile(path):
            found = [path]
        elif glob.has_magic(path):
            found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            if not found:
                raise ValueError(f"--input pattern {entry!r} matches no file")
        else:
            raise ValueError(f"--input {entry!r} is neither a file, a folder nor a glob pattern")
        files.extend(found)
    seen, unique = set(), []
    for f in files:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    if not unique:
        raise ValueError("--input names no image")
    return unique


def output_names(files: Sequence[str]) -> List[str]:
    """``<stem>_panoptic.png`` per file; stems used more than once get ``_<n>`` (n = 1, 2, ...)
    appended in input order so that no result overwrites another."""
    counts, names = {}, []
    for f in files:
        stem = Path(f).stem
        n = counts.get(stem, 0)
        counts[stem] = n + 1
        names.append(f"{stem}_panoptic.png" if n == 0 else f"{stem}_{n}_panoptic.png")
    return names


def setup_cfg(args):
    from detectron2.config import get_cfg

    from detectron2_cops.config import add_cops_config

    cfg = get_cfg()
    add_cops_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts) + list(getattr(args, "overrides", None) or []))
    cfg.freeze()
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit status (0 = every image written, 1 = some skipped, 2 = bad
    arguments: no input image, an --output that is not a folder, a config that cannot be read or
    names no dataset)."""
    args = get_parser().parse_args(argv)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="detectron2_cops")
    setup_logger(name="detectron2")
    try:
        files = expand_inputs(args.input)
    except ValueError as e:
        logger.error(str(e))
        return 2
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        logger.error(f"--output {args.output!r} exists and is not a folder")
        return 2

    import numpy as np
    import tqdm
    from PIL import Image

    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    import detectron2_cops  # noqa: F401  (importing registers the COPS components and datasets)

    try:
        cfg = setup_cfg(args)
    except (AssertionError, KeyError, ValueError, TypeError, FileNotFoundError) as e:  # yacs' errors
        logger.error(f"the config ({args.config_file} with the overrides) cannot be read: {type(e).__name__}: {e}")
        return 2
    dataset_names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not dataset_names:
        logger.error("the config names no dataset (DATASETS.TEST / TRAIN) to take metadata from")
        return 2
    metadata = MetadataCatalog.get(dataset_names[0])
    predictor = DefaultPredictor(cfg)

    os.makedirs(args.output, exist_ok=True)
    written, failed = 0, []
    for path, name in tqdm.tqdm(list(zip(files, output_names(files))), desc="COPS demo"):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, ...)
            logger.warning(f"skipping {path}: cannot read it as an image ({type(e).__name__}: {e})")
            failed.append(path)
            continue
        outputs = predictor(image)
        if "panoptic_seg" not in outputs:
            raise ValueError(
                f"the model returned no 'panoptic_seg' for {path}; got keys {sorted(outputs)}"
            )
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        visualizer = Visualizer(image[:, :, ::-1], metadata)
        vis = visualizer.draw_panoptic_seg(panoptic_seg.to("cpu"), segments_info)
        Image.fromarray(np.asarray(vis.get_image())).save(os.path.join(args.output, name))
        written += 1

    logger.info(f"wrote {written} panoptic visualizations to {os.path.abspath(args.output)}")
    if failed:
        logger.error(f"{len(failed)} of {len(files)} inputs could not be read: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
