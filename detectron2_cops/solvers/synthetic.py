"""Seeded synthetic AMWC instances on the COPS grid graph, for benchmarks and tests.

An instance is made from a synthetic panoptic map (stuff regions from a random Voronoi partition,
thing instances as random ellipses on top) and noisy costs in the form the COPS network produces
(COPS Sec. 3.1): semantic costs ``c_V = -(logits)`` with the true class's logit raised by
``class_margin``, and edge costs ``c_E = -(cut logit)`` with cut logits ``+edge_margin`` across
segment boundaries and ``-edge_margin`` inside segments. Logits get Gaussian noise of std
``class_noise`` and ``edge_noise``; like the outputs of a CNN the noise is spatially correlated:
white noise smoothed with a Gaussian of std ``noise_smoothing`` grid pixels (per class channel and
per edge map), then rescaled to unit std. The defaults give per-pixel class accuracies of about
97 % (K = 19) and 90 % (K = 133) and an edge accuracy of about 91 %, in the range of trained
networks.

:func:`iid_noise_instance` gives the same scenes with i.i.d. (unsmoothed) noise: the costs of an
untrained or uncertain network, where many small clusters form and GAEC does the most work.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np
from scipy import ndimage

from .grid import GridGraph

__all__ = ["SyntheticInstance", "synthetic_panoptic_map", "synthetic_instance", "iid_noise_instance"]


class SyntheticInstance(NamedTuple):
    """``node_costs [N, K] float32``, ``edges [E, 2] int64``, ``edge_costs [E] float32``,
    ``partitionable [K] bool``, ``grid`` (:class:`GridGraph`), ``semantic [H, W] int64`` and
    ``instance [H, W] int64`` of the underlying ground-truth map (instance 0 for stuff)."""

    node_costs: np.ndarray
    edges: np.ndarray
    edge_costs: np.ndarray
    partitionable: np.ndarray
    grid: GridGraph
    semantic: np.ndarray
    instance: np.ndarray


def synthetic_panoptic_map(
    height: int,
    width: int,
    num_classes: int,
    thing_classes: Sequence[int],
    *,
    num_stuff_regions: int = 12,
    num_things: int = 30,
    rng: np.random.Generator,
):
    """Random panoptic map: returns ``(semantic [H, W] int64, instance [H, W] int64)``.

    Stuff: a Voronoi partition into ``num_stuff_regions`` cells, each with a random stuff class.
    Things: ``num_things`` random ellipses (radius 2 % to 12 % of the shorter side) with random
    thing classes, painted in order (later ones occlude earlier ones). Instance ids start at 1.
    """
    thing = np.zeros(num_classes, dtype=bool)
    thing[list(thing_classes)] = True
    stuff_classes = np.flatnonzero(~thing)
    things = np.flatnonzero(thing)
    yy, xx = np.mgrid[0:height, 0:width]
    sem = np.zeros((height, width), dtype=np.int64)
    inst = np.zeros((height, width), dtype=np.int64)
    if len(stuff_classes):
        cy = rng.uniform(0, height, num_stuff_regions)
        cx = rng.uniform(0, width, num_stuff_regions)
        d = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        cell = np.argmin(d, axis=0)
        cell_class = rng.choice(stuff_classes, num_stuff_regions)
        sem = cell_class[cell]
    if len(things):
        short = min(height, width)
        for t in range(num_things):
            ry = rng.uniform(0.02, 0.12) * short + 1
            rx = rng.uniform(0.02, 0.12) * short + 1
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            sem[mask] = rng.choice(things)
            inst[mask] = t + 1
    return sem, inst


def _correlated_noise(rng: np.random.Generator, shape, smoothing: float) -> np.ndarray:
    """Unit-std Gaussian noise of ``shape`` ``[C, H, W]``, smoothed over ``H, W`` with std ``smoothing``."""
    noise = rng.normal(0.0, 1.0, size=shape)
    if smoothing > 0:
        noise = ndimage.gaussian_filter(noise, (0, smoothing, smoothing))
        std = noise.std()
        if std > 0:
            noise /= std
    return noise


def synthetic_instance(
    height: int,
    width: int,
    num_classes: int,
    num_thing_classes: int,
    edge_distances: Sequence[int],
    *,
    seed: int = 0,
    class_noise: float = 1.0,
    class_margin: float = 4.0,
    edge_noise: float = 1.5,
    edge_margin: float = 2.0,
    noise_smoothing: float = 4.0,
    edge_sampling_intervals: Optional[Sequence[int]] = None,
    num_stuff_regions: int = 12,
    num_things: int = 30,
) -> SyntheticInstance:
    """A seeded AMWC instance on a ``height x width`` grid (see the module docstring).

    The first ``num_thing_classes`` classes are partitionable (things), the rest stuff.
    """
    if not 0 <= num_thing_classes <= num_classes:
        raise ValueError("num_thing_classes must lie in [0, num_classes]")
    rng = np.random.default_rng(seed)
    thing_classes = list(range(num_thing_classes))
    sem, inst = synthetic_panoptic_map(height, width, num_classes, thing_classes, rng=rng,
                                       num_stuff_regions=num_stuff_regions,
                                       num_things=num_things if num_thing_classes else 0)
    N = height * width
    class_field = _correlated_noise(rng, (num_classes, height, width), noise_smoothing)
    logits = class_noise * class_field.reshape(num_classes, N).T
    logits[np.arange(N), sem.reshape(-1)] += class_margin
    grid = GridGraph(height, width, edge_distances, edge_sampling_intervals)
    seg = (sem * (inst.max() + 1) + inst).reshape(-1)
    cut = seg[grid.edges[:, 0]] != seg[grid.edges[:, 1]]
    edge_fields = [_correlated_noise(rng, shape, noise_smoothing) for shape in grid.map_shapes]
    cut_logits = np.where(cut, edge_margin, -edge_margin) + edge_noise * grid.maps_to_edge_values(edge_fields)
    return SyntheticInstance(
        node_costs=np.ascontiguousarray(-logits, dtype=np.float32),  # [N, K] row-major
        edges=grid.edges,
        edge_costs=(-cut_logits).astype(np.float32),
        partitionable=np.arange(num_classes) < num_thing_classes,  # the first num_thing_classes
        grid=grid,
        semantic=sem,
        instance=inst,
    )


def iid_noise_instance(
    height: int,
    width: int,
    num_classes: int,
    num_thing_classes: int,
    edge_distances: Sequence[int],
    *,
    seed: int = 0,
    **kwargs,
) -> SyntheticInstance:
    """A seeded instance on the Voronoi/ellipse scenes of :func:`synthetic_instance` with i.i.d.
    Gaussian noise on every class logit and every cut logit (``noise_smoothing = 0``; the other
    keyword arguments are those of :func:`synthetic_instance`, same defaults).

    The per-pixel accuracies stay those of the smoothed instances (about 97 % for K = 19, 90 % for
    K = 133), but the errors are scattered pixels rather than CNN-like blobs: the kind of costs
    an untrained or uncertain model gives, and harder for GAEC (more competing contractions). Raises ``ValueError`` like
    :func:`synthetic_instance`.
    """
    if "noise_smoothing" in kwargs:
        raise ValueError("iid_noise_instance sets noise_smoothing = 0; use synthetic_instance for smoothed noise")
    return synthetic_instance(height, width, num_classes, num_thing_classes, edge_distances, seed=seed,
                              noise_smoothing=0.0, **kwargs)
