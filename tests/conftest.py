"""Fixtures and helpers shared by the test modules (pytest loads this file first).

Tests that need Detectron2 skip with the reason printed when it is not installed; everything
under ``detectron2_cops.solvers`` and ``detectron2_cops.layers`` is tested without it.
"""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "coco_panoptic_sample"

# --- data: copies of the bundled sample (test_data*, test_evaluation) ---

# --- modeling: a tiny config and synthetic dataset (test_meta_arch, test_optimizer) ---
