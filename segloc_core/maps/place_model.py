"""A model for your own place: geometry-label training on a map's own images and 3D points.

The shipped model names 4 m cells of the default world; on another place its labels mean nothing
(measured: 0 of 10 Sacre Coeur fixes accepted). `segloc map build --train-model` therefore trains a
scene-specific model on the mapping images before labelling the map with it: every observed map
point labels a small disc around its pixel in each image that sees it (the label of the place cell
it lies in, `segloc_core.place_labels`), everything else is unlabelled, and the network learns to
name the cell (`mode: geometry`, `segloc_core.net.train_geometry`) under its geometric and
photometric augmentation, started from the shipped weights. The same geometry then gets its labels
from the model's place cells, so training and map cannot disagree about where a cell is.

Cell size: with `geometry.cells_per_image` (the place config's way), the cell edge at which the
median mapping image sees that many distinct cells among its observed points. Why: what the refiner
aligns is the boundaries between cells, and how many a photo sees depends on the extent of what it
shows, not on its depth alone. The default world's 4 m cells, scaled by the scene depth, left the
Sacre Coeur photos 8-22 cells among their points and 2-11 labels inside the network's crop (one
covering 50-87 % of the labelled pixels), so
refinement had almost nothing to align: fixes with 0.75-0.93 label consistency 10-30 % of the
scene depth off, even from a start at the true pose; on the world the shipped model's poses see ~50.
Otherwise `geometry.cell_m` in metres of the default world, scaled by the scene depth on a map of
unknown scale like every other distance (`geometry.distance_scale`). The model records the cell
in map units (`ModelConfig.place_cells`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.geometry import aspect_crop, distance_scale
from segloc_core.maps.build import MapGeometry, scene_depth
from segloc_core.net.label_set import IGNORE, LabelSet, save_label_set
from segloc_core.net.train_config import TrainConfig
from segloc_core.place_labels import PlaceCells
from segloc_core.progress import progress_bar

log = logging.getLogger(__name__)


def cells_seen(geometry: MapGeometry, cell: float) -> np.ndarray:
    """Per image, how many distinct cells of edge `cell` (map units) its observed points lie in."""
    obs = geometry.observations
    keys = np.column_stack([obs.image_index, np.floor(geometry.xyz_m[obs.point_index] / cell).astype(np.int64)])
    per_image = np.unique(keys, axis=0)[:, 0]
    return np.bincount(per_image, minlength=len(geometry.names))


def cell_size_for(geometry: MapGeometry, per_image: int) -> float:
    """The largest cell edge (map units, on a grid of 2^(1/8) steps from the scene depth down to
    1/1024 of it) at which the median image that sees points sees at least `per_image` distinct cells."""
    depth = scene_depth(geometry)
    if depth <= 0:
        raise InputError(f"{geometry.source}: no observed points in front of the cameras; cannot size place cells")
    seen_any = np.bincount(geometry.observations.image_index, minlength=len(geometry.names)) > 0
    for cell in depth * 2.0 ** (-np.arange(81) / 8):
        if np.median(cells_seen(geometry, cell)[seen_any]) >= per_image:
            return float(cell)
    return float(cell)


def place_cells_for(geometry: MapGeometry, cfg: TrainConfig) -> PlaceCells:
    """The config's cells in the geometry's units (4 significant digits, so the model's
    `place_cells` text names exactly these cells): sized from the map for `cells_per_image`, else
    `cell_m` (metres of the default world) scaled to the map."""
    g = cfg.geometry
    scale = distance_scale(geometry.units, scene_depth(geometry))

    def units(v: float) -> float:
        return float(f"{v * scale:.4g}") if v > 0 else 0.0

    cell = float(f"{cell_size_for(geometry, g.cells_per_image):.4g}") if g.cells_per_image > 0 else units(g.cell_m)
    return PlaceCells(cell, cfg.model.num_classes, units(g.parent_cell_m), g.parents)


def place_label_set(geometry: MapGeometry, cells: PlaceCells, size_wh: tuple[int, int], radius_px: int = 2,
                    progress: bool = True) -> LabelSet:
    """Each database image as the network sees it (centred crop to its aspect, resized to size_wh),
    with the cell label of every observed point painted as a disc of radius_px input pixels;
    unobserved pixels are unlabelled (IGNORE). Names are "place/<image index>"."""
    import cv2

    from segloc_core.net.infer import prepare_image

    if cells.K > IGNORE:
        raise InputError(f"geometry labels are stored as bytes: K={cells.K} must be <= {IGNORE}")
    obs = geometry.observations
    point_labels = cells.labels(geometry.xyz_m)
    images, labels, names, poses = [], [], [], []
    for i in progress_bar(range(len(geometry.names)), desc="place labels", unit="img", enabled=progress):
        sel = obs.image_index == i
        if not sel.any():
            continue
        cam = geometry.cameras[i]
        x0, y0, w, h = aspect_crop(cam.width, cam.height, size_wh)  # what prepare_image keeps
        uv = (obs.uv[sel] - (x0, y0)) * (size_wh[0] / w, size_wh[1] / h)  # COLMAP convention, exact
        lab = np.full((size_wh[1], size_wh[0]), IGNORE, np.uint8)
        for (u, v), k in zip(uv, point_labels[obs.point_index[sel]]):
            if 0 <= u < size_wh[0] and 0 <= v < size_wh[1]:
                cv2.circle(lab, (int(u), int(v)), radius_px, int(k), -1)  # pixel floor(u), floor(v)
        images.append(prepare_image(geometry.load_rgb(i), size_wh))
        labels.append(lab)
        names.append(f"place/{i:06d}")
        poses.append(geometry.T_cam_world[i].inv().matrix())
    if len(images) < 2:
        raise InputError(f"{geometry.source}: fewer than 2 images see map points; nothing to train on")
    return LabelSet(np.stack(images), np.stack(labels), names, np.stack(poses))


def train_place_model(geometry: MapGeometry, out_onnx: Path, config: Path | str,
                      init: Path | None = None, progress: bool = True) -> Path:
    """Train a geometry-label model on `geometry`'s images and points and export it to `out_onnx`
    (the run's checkpoint, metrics and curves in `<out_onnx stem>_training/`). `init`: weights to start
    from (default: the shipped model's)."""
    from segloc_core.net.export import export_model
    from segloc_core.net.train_geometry import train
    from segloc_core.paths import default_model_path

    t0 = time.perf_counter()
    cfg = TrainConfig.load(Path(config))
    if cfg.mode != "geometry":
        raise InputError(f"{config}: a place model is trained with mode: geometry, not {cfg.mode!r}")
    cells = place_cells_for(geometry, cfg)
    run = out_onnx.parent / f"{out_onnx.stem}_training"
    size = (cfg.model.input_width, cfg.model.input_height)
    labels = save_label_set(place_label_set(geometry, cells, size, progress=progress), run / "labels.npz")
    init = init or default_model_path().with_suffix(".pt")
    if not Path(init).is_file():
        raise InputError(f"initial weights {init} do not exist")
    d = cfg.to_dict()
    d["model"] = {**d["model"], "place_cells": ""}
    d["geometry"] = {**d["geometry"], "cell_m": cells.cell_m, "parent_cell_m": cells.parent_cell_m,
                     "label_set": str(labels), "init_weights": str(init)}
    res = train(TrainConfig.from_dict(d), run, progress=progress)
    onnx = export_model(res.weights, res.config, out_onnx)
    log.info("place model %s: cells %s, %.0f s", onnx, cells.name(), time.perf_counter() - t0)
    return onnx

