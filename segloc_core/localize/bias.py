"""The refiner's systematic offset for one map and model, measured on posed mapping images.

Why: refined from their own true poses, frames of the default world settle a median 0.4-0.6 m
behind the truth (autumn -0.50, night -0.61, even the mapping frames the shipped model trained on
-0.37 m along the optical axis, pitched 0.3 deg), while the oracle's labels settle 0.04 m off. The
network's regions are not quite where the map's points are (measured: its label maps are
registered, best image shift 0 px, but its sky reaches a median of one row of 160x120 below the true
skyline; a region it is sure of grows over smaller, less certain neighbours), and on its maps the
cost is lowest where the projection shrinks towards the vanishing point: camera moved back,
pitched. The offset is close to constant in the camera frame, so the map build measures it on
mapping images (their poses are known there: rendered, SLAM or SfM) and the localizer corrects
every fix by it (`Localizer`, `MapMetadata.refiner_bias`): T_true = B T_refined.

The same images give the spread of the corrected optimum around the truth, which the localizer adds
to each fix's covariance: the refiner's own (sigma^2 H^-1) ignores that the labels themselves are
off, and covered 16 % of autumn errors within 3 sigma (with the spread: 82 %; night 11 -> 65 %).

It is a calibration, not a cure: measured on images the model may have trained on, it is a lower
bound for unseen conditions (the world's mapping frames: 0.37 m; autumn queries 0.50 m), and it is
the median over places, so a street whose depth differs from the median keeps a residual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from segloc_core.geometry import Pose
from segloc_core.localize.localizer import Localizer, LocalizerConfig, PriorSource
from segloc_core.localize.refine import LevelInput

if TYPE_CHECKING:
    from segloc_core.maps.format import LabeledMap

# fewer converged images than this give no estimate: a median of a handful of places is noise
MIN_IMAGES = 5


@dataclass(frozen=True)
class BiasEstimate:
    """twist: [rho, omega] of B (camera frame, map units and radians); spread: the 6x6 covariance
    (row-major, 36 numbers) of the offsets around it, the error a corrected fix still has from a
    true start, which the localizer adds to each fix's published covariance; images: converged
    refinements both come from; offset_before / offset_after: median distance (map units) between the refined
    and the true camera centre without and with the correction, each image corrected by the median
    of the *others* (a diagnostic, not a test: see `measure_refiner_bias`)."""

    twist: tuple[float, ...]
    spread: tuple[float, ...]
    images: int
    offset_before: float
    offset_after: float


def measure_refiner_bias(labeled_map: LabeledMap, samples: Iterable[tuple[Sequence[LevelInput], Pose]],
                         config: LocalizerConfig = LocalizerConfig()) -> BiasEstimate | None:
    """Refine each (levels, true T_cam_world) from its true pose with the map's points near it; the
    bias is the component-wise median of log(T_true T_refined^-1) over the converged ones, the
    spread their covariance around it. None if fewer than MIN_IMAGES converged.

    The leave-one-out figure (`offset_after`) is reported, not used as a test: the model has seen
    its mapping images, so they say little about a new one. On the Sacre Coeur leave-one-out (9
    mapping photos per fold, a place model trained on them) it said "worse" in 4 of 10 folds, in 3
    of which the correction brought the held-out query closer; it did in 8 of 10 folds."""
    loc = Localizer(labeled_map, dataclasses.replace(config, tracking=False, correct_refiner_bias=False))
    offsets, truths, fixes = [], [], []
    for levels, T_true in samples:
        loc.reset()
        fix = loc.localize(levels, T_true, PriorSource.INITIALPOSE)
        if fix.num_points == 0 or fix.reason.startswith("refinement failed"):
            continue
        offsets.append((T_true @ fix.T_cam_world.inv()).log())
        truths.append(T_true)
        fixes.append(fix.T_cam_world)
    if len(offsets) < MIN_IMAGES:
        return None
    offsets = np.stack(offsets)
    before = np.median([np.linalg.norm(f.center() - t.center()) for f, t in zip(fixes, truths)])
    held_out = [np.linalg.norm((Pose.exp(np.median(np.delete(offsets, i, 0), axis=0)) @ f).center() - t.center())
                for i, (f, t) in enumerate(zip(fixes, truths))]
    twist = np.median(offsets, axis=0)
    centred = offsets - twist
    spread = centred.T @ centred / (len(offsets) - 1)
    return BiasEstimate(tuple(float(v) for v in twist), tuple(float(v) for v in spread.ravel()), len(offsets),
                        float(before), float(np.median(held_out)))
