"""The pixel grid graph of COPS: edge distances <-> edge lists.

COPS (Abbas & Swoboda 2021, Sec. 3.1) solves the asymmetric multiway cut on the pixels of the
output-stride-4 grid. Every pixel is joined to its ``+``-shaped neighbours at each distance ``d``
in ``edge_distances``. The affinity head predicts one edge-cost map per distance, of shape
``[2, H_d, W_d]``; this module fixes how a map position corresponds to an edge and converts
between the maps and the flat edge lists the solvers take.

Convention (the same as the original COPS code for ``d = 1`` and even ``d``):

* sampling interval ``s`` (``edge_sampling_intervals``, default 1): the map of distance ``d`` has
  shape ``(H_d, W_d) = (ceil(H / s), ceil(W / s))``; map position ``(a, b)`` is anchored at grid
  pixel ``(y, x) = (a * s, b * s)``;
* ``lo = d // 2`` for ``d > 1`` and ``lo = 0`` for ``d = 1``; ``hi = d - lo``;
* channel 0 (edges along rows / the y axis) joins ``(y - lo, x)`` and ``(y + hi, x)``;
* channel 1 (edges along columns / the x axis) joins ``(y, x - lo)`` and ``(y, x + hi)``;
* a map position whose edge leaves the grid is *invalid*: it is not an edge of the graph, its
  cost is ignored and its label is 0.

Pixel ``(y, x)`` is node ``y * W + x`` (row-major). Edges are enumerated distance by distance,
channel 0 before channel 1, valid map positions in row-major order.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..checks import as_int, as_int_list

__all__ = ["GridGraph", "cached_grid_graph", "edge_offsets"]


def edge_offsets(distance: int) -> Tuple[int, int]:
    """Return ``(lo, hi)`` with ``lo + hi == distance``: how far the two endpoints of an edge of
    this distance lie before and after its anchor pixel (see the module docstring). Raises
    ValueError unless ``distance`` is an integer >= 1."""
    return _offsets(as_int(distance, "distance", 1))


def _offsets(d: int) -> Tuple[int, int]:
    lo = 0 if d == 1 else d // 2
    return lo, d - lo


def _fill_value(fill, dtype: np.dtype) -> np.ndarray:
    """``fill`` as a 0-d array of ``dtype``; ValueError if it is not a scalar or does not fit
    (an integer or bool dtype must hold it exactly, a float dtype without overflow)."""
    f = np.asarray(fill)
    if f.ndim != 0:
        raise ValueError(f"fill must be a scalar, got {fill!r}")
    try:
        with np.errstate(all="ignore"):
            v = f.astype(dtype)
    except (TypeError, ValueError):
        raise ValueError(f"fill {fill!r} cannot be stored in the values' dtype {dtype}") from None
    if np.dtype(dtype).kind in "iub":
        fits = f.dtype.kind in "iubf" and bool(v == f)
    elif np.dtype(dtype).kind in "fc":
        fits = f.dtype.kind in "iubf" and not (np.isfinite(f) and not np.isfinite(v))
    else:
        fits = True
    if not fits:  # e.g. 300 or -1 in uint8, 0.5 in int64, 1e300 in float32
        raise ValueError(f"fill {fill!r} cannot be stored in the values' dtype {dtype}")
    return v


class GridGraph:
    """Edges of the COPS grid graph and conversions between edge-cost maps and edge lists.

    Args:
        height, width: grid size in nodes (pixels of the stride-4 grid), ``>= 0``.
        edge_distances: distances ``d`` in grid pixels, e.g. ``[1, 4, 16, 32, 64]`` (a list,
            tuple, array or tensor of integers; ``4.0`` is not one).
        edge_sampling_intervals: one sampling interval ``s`` per distance (default all 1).

    Attributes:
        edges: ``[E, 2] int64`` node ids ``(y * width + x)`` of each edge's two endpoints.
        map_shapes: ``[(2, H_d, W_d), ...]`` one per distance.
        num_nodes, num_edges: ``height * width`` and ``E``.
        map_index: ``[E] int64``; edge ``e`` reads position ``map_index[e]`` of the concatenation
            of all flattened maps (``np.concatenate([m.ravel() for m in maps])``).

    Raises:
        ValueError: sizes that are not integers ``>= 0``; distances or intervals that are not
            sequences of integers ``>= 1``; a number of intervals that differs from the number of
            distances.
    """

    def __init__(
        self,
        height: int,
        width: int,
        edge_distances: Sequence[int],
        edge_sampling_intervals: Optional[Sequence[int]] = None,
    ):
        self.height = as_int(height, "height", 0)
        self.width = as_int(width, "width", 0)
        self.edge_distances = as_int_list(edge_distances, "edge_distances", 1)
        if edge_sampling_intervals is None:
            edge_sampling_intervals = [1] * len(self.edge_distances)
        self.edge_sampling_intervals = as_int_list(edge_sampling_intervals, "edge_sampling_intervals", 1)
        if len(self.edge_sampling_intervals) != len(self.edge_distances):
            raise ValueError(
                "edge_sampling_intervals must have one entry per edge distance: "
                f"got {len(self.edge_sampling_intervals)} intervals for "
                f"{len(self.edge_distances)} distances"
            )

        H, W = self.height, self.width
        self.map_shapes: List[Tuple[int, int, int]] = []
        edges, index, valid_masks = [], [], []
        # (first row, end row, first column, end column) of the valid positions of each
        # distance's map (channel 0: those rows, all columns; channel 1: all rows, those columns)
        self._bounds: List[Tuple[int, int, int, int]] = []
        offset = 0
        for d, s in zip(self.edge_distances, self.edge_sampling_intervals):
            lo, hi = _offsets(d)
            Hd, Wd = -(-H // s), -(-W // s)
            self.map_shapes.append((2, Hd, Wd))
            ys = np.arange(Hd, dtype=np.int64) * s
            xs = np.arange(Wd, dtype=np.int64) * s
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            pos = np.arange(2 * Hd * Wd, dtype=np.int64).reshape(2, Hd, Wd) + offset
            # Channel 0 (along y) is an edge where both endpoints' rows lie in the grid, channel 1
            # (along x) where both columns do: whole map rows / columns.
            row_ok = (ys - lo >= 0) & (ys + hi <= H - 1)
            col_ok = (xs - lo >= 0) & (xs + hi <= W - 1)
            valid = np.zeros((2, Hd, Wd), dtype=bool)
            valid[0] = row_ok[:, None]
            valid[1] = col_ok[None, :]
            e0 = np.stack([(yy - lo) * W + xx, (yy + hi) * W + xx], -1)[valid[0]]
            e1 = np.stack([yy * W + xx - lo, yy * W + xx + hi], -1)[valid[1]]
            edges += [e0, e1]
            index += [pos[0][valid[0]], pos[1][valid[1]]]
            valid_masks.append(valid)
            rows, cols = np.flatnonzero(row_ok), np.flatnonzero(col_ok)
            r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
            c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)
            self._bounds.append((r0, r1, c0, c1))
            offset += 2 * Hd * Wd
        self._total_map_size = offset
        # (the empty int64 part gives the right shape and dtype when there is no distance)
        self.edges = np.concatenate(edges + [np.zeros((0, 2), dtype=np.int64)])
        self.map_index = np.concatenate(index + [np.zeros(0, dtype=np.int64)])
        self._valid_masks = valid_masks

    # ------------------------------------------------------------------ properties
    @property
    def num_nodes(self) -> int:
        return self.height * self.width

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    def valid_masks(self) -> List[np.ndarray]:
        """``[2, H_d, W_d] bool`` per distance: True where the map position is an edge."""
        return [m.copy() for m in self._valid_masks]

    def __repr__(self) -> str:
        fields = ("height", "width", "edge_distances", "edge_sampling_intervals", "num_edges")
        return f"GridGraph({', '.join(f'{n}={getattr(self, n)}' for n in fields)})"

    # ------------------------------------------------------------------ conversions
    def maps_to_edge_values(self, maps: Sequence[np.ndarray]) -> np.ndarray:
        """Read per-edge values (costs or labels) off edge maps.

        Args:
            maps: one array ``[2, H_d, W_d]`` per distance, or ``[B, 2, H_d, W_d]`` for a batch.
        Returns:
            ``[E]`` (or ``[B, E]``) array with the maps' dtype (promoted if the maps differ).
        Raises:
            ValueError: wrong number of maps or a map of the wrong shape.
        """
        ms = [np.asarray(m) for m in maps]
        lead = ms[0].shape[:1] if ms and ms[0].ndim == 4 else ()  # (B,) for a batch
        if len(ms) != len(self.map_shapes) or any(m.shape != lead + s for m, s in zip(ms, self.map_shapes)):
            raise ValueError(f"maps must hold one map per edge distance {self.edge_distances}, of shapes "
                             f"{[list(lead + s) for s in self.map_shapes]}, got {[list(m.shape) for m in ms]}")
        return self._to_values(ms, lead)

    def _to_values(self, maps: Sequence[np.ndarray], lead: Tuple[int, ...] = ()) -> np.ndarray:
        """:meth:`maps_to_edge_values` without its checks: ``maps`` one array ``lead + (2, H_d,
        W_d)`` per distance (``lead``: ``()`` or ``(B,)``); float64 ``lead + (0,)`` without maps."""
        if not maps:
            return np.zeros(lead + (0,), dtype=np.float64)
        # the same order as map_index: per distance, channel 0's valid rows, channel 1's valid
        # columns, each row-major (slices: one copy, no gather)
        parts = []
        for m, (r0, r1, c0, c1) in zip(maps, self._bounds):
            Hd, Wd = m.shape[-2:]
            parts.append(m[..., 0, r0:r1, :].reshape(lead + ((r1 - r0) * Wd,)))  # B = 0 too
            parts.append(m[..., 1, :, c0:c1].reshape(lead + (Hd * (c1 - c0),)))
        return np.concatenate(parts, -1)

    def edge_values_to_maps(self, values: np.ndarray, fill=0) -> List[np.ndarray]:
        """Scatter per-edge values back into maps; invalid positions get ``fill``.

        Args:
            values: ``[E]`` or ``[B, E]`` per-edge values (e.g. solver ``edge_labels``).
            fill: value of map positions that are not edges.
        Returns:
            one array ``[2, H_d, W_d]`` (or ``[B, 2, H_d, W_d]``) per distance, dtype of ``values``.
        Raises:
            ValueError: ``values`` does not have ``E`` entries in its last dimension, or ``fill``
                does not fit its dtype.
        """
        values = np.asarray(values)
        if values.ndim not in (1, 2) or values.shape[-1] != self.num_edges:
            raise ValueError(
                f"values must have shape [{self.num_edges}] or [B, {self.num_edges}], "
                f"got {list(values.shape)}"
            )
        return self._to_maps(values, _fill_value(fill, values.dtype))

    def _to_maps(self, values: np.ndarray, fill_value=0) -> List[np.ndarray]:
        """:meth:`edge_values_to_maps` without its checks: ``values`` an ``[E]`` or ``[B, E]``
        array, ``fill_value`` a scalar of its dtype."""
        lead = values.shape[:-1]
        flat = np.full(lead + (self._total_map_size,), fill_value, dtype=values.dtype)
        flat[..., self.map_index] = values
        out, offset = [], 0
        for shape in self.map_shapes:
            n = shape[0] * shape[1] * shape[2]
            out.append(flat[..., offset : offset + n].reshape(lead + shape))
            offset += n
        return out


@functools.lru_cache(maxsize=64)
def cached_grid_graph(height: int, width: int, edge_distances: Tuple[int, ...],
                      edge_sampling_intervals: Tuple[int, ...]) -> GridGraph:
    """``GridGraph(height, width, edge_distances, edge_sampling_intervals)`` from an LRU cache of
    the last 64 argument tuples, shared by the AMWC layer and the post-processor (the graph is
    read, never modified)."""
    return GridGraph(height, width, edge_distances, edge_sampling_intervals)
