"""Asymmetric multiway cut (AMWC) and multiway cut (MWC) solvers and the COPS grid graph.

Pure NumPy + the native extension ``detectron2_cops._C``; imports neither PyTorch nor Detectron2.
"""
from .amwc import (
    AMWCResult,
    amwc_objective,
    clear_graph_structure_cache,
    solve_amwc,
    solve_amwc_batch,
    solve_mwc,
    solve_mwc_batch,
)
from .grid import GridGraph, edge_offsets

__all__ = [
    "AMWCResult",
    "GridGraph",
    "amwc_objective",
    "clear_graph_structure_cache",
    "edge_offsets",
    "solve_amwc",
    "solve_amwc_batch",
    "solve_mwc",
    "solve_mwc_batch",
]
