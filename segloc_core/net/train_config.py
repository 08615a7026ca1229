"""Training configuration: the YAML sections of `segloc train` and the result it returns.

One place for the config of every training mode (self-supervised SegLoc, FGSN, geometry labels), so
the mode modules (`segloc_core.net.train`, `segloc_core.net.train_geometry`) share it without importing
each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml

from segloc_core.errors import InputError
from segloc_core.net.model import ModelConfig
from segloc_core.place_labels import PlaceCells

MODES = ("segloc", "fgsn", "geometry")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class DataConfig:
    source: str = "world"  # world | colmap | synthetic
    world: str = "default"  # world name under $SEGLOC_HOME/world or a path
    conditions: list[str] | None = None  # None = all of the world's
    colmap_model: str | None = None  # source=colmap: reconstruction folder and image folder
    colmap_images: str | None = None
    train_pairs: int = 400
    heldout_pairs: int = 60
    max_corr: int = 512  # correspondences kept per pair


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 6
    steps_per_epoch: int = 50
    batch_pairs: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    corr_per_pair: int = 128  # correspondences sampled per pair and step
    pixels_per_image: int = 1024  # pixels per image and level in the clustering losses
    warmup_epochs: int = 1  # Student-t targets (Eq. 4) instead of Eq. 2
    kmeans_images: int = 32
    seed: int = 0
    threads: int = 2
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (0 switches a term off: the paper's ablation)."""

    dc: float = 1.0
    cc: float = 1.0
    pc: float = 0.5
    fc: float = 0.5
    ms: float = 1.0
    fc_tau: float = 0.07
    head_tau: float = 0.1  # heads start as prototypes / head_tau
    label_prior: str = "data"  # target update: "data" = Eq. 2 with d^p (paper), "uniform" = DDC's d^u,
    # "sinkhorn" = balanced Sinkhorn-Knopp targets (losses.sinkhorn_targets)
    sinkhorn_sharpen: float = 2.0


@dataclass(frozen=True)
class FgsnConfig:
    recluster_every: int = 100
    pca_dim: int = 32


@dataclass(frozen=True)
class GeometryConfig:
    """mode=geometry: supervised labels of the world cell each pixel sees (`segloc_core.net.label_set`).

    Labels: a hash of the `cell_m` cell, the `parent_cell_m` cell's hash among `parents` in the high
    digit (K = model.num_classes must be a multiple of parents), with the material id mixed in only
    if `material` (the rendered world knows it; SfM points do not). Data: every frame of
    data.conditions plus `jitter_views` re-rendered nearby views each (`shift_m`, `turn_deg`);
    every `heldout_every`-th frame (with its views) is kept out for the per-epoch accuracy.
    `extra_conditions` adds one view near every frame under each named appearance that no traversal
    has (`dusk`: lamps and lit windows), so the network sees lamp-lit scenes before a night query.
    Augmentation: random scale/shift/rotation (`scale_range`, `rotate_deg`) so no label can be read
    off the image position, and strong photometric changes (gamma, exposure down to night levels,
    colour mixing, noise) for conditions the training data lacks."""

    cell_m: float = 1.0
    parent_cell_m: float = 4.0
    parents: int = 10
    material: bool = False
    jitter_views: int = 1
    shift_m: float = 1.5
    turn_deg: float = 10.0
    heldout_every: int = 10
    scale_range: tuple[float, float] = (0.8, 1.25)
    rotate_deg: float = 5.0
    extra_conditions: tuple[str, ...] = ()  # appearances no traversal has, rendered near every frame (e.g. dusk)
    # place models (`segloc map build --train-model`): > 0 sizes the cells from the map instead of
    # cell_m, as the edge at which the median mapping image sees this many distinct cells among its
    # observed points (`maps.place_model.cell_size_for`)
    cells_per_image: int = 0
    label_set: str | None = None  # a saved label set (.npz) to train on instead of rendering one
    init_weights: str | None = None  # start from these weights (a state dict of the same model shape)


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "segloc"  # segloc | fgsn | geometry
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    fgsn: FgsnConfig = field(default_factory=FgsnConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        parts = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig,
                 "fgsn": FgsnConfig, "geometry": GeometryConfig}
        unknown = set(d) - set(parts) - {"mode"}
        if unknown:
            raise InputError(f"unknown training config sections: {sorted(unknown)}")
        kw: dict = {"mode": d.get("mode", "segloc")}
        if kw["mode"] not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {kw['mode']!r}")
        for name, typ in parts.items():
            sec = d.get(name) or {}
            if typ is ModelConfig:
                kw[name] = ModelConfig.from_dict(sec)
                continue
            bad = set(sec) - {f.name for f in fields(typ)}
            if bad:
                raise InputError(f"unknown keys in config section {name!r}: {sorted(bad)}")
            if typ is GeometryConfig:
                sec = {**sec, **{k: tuple(sec[k]) for k in ("scale_range", "extra_conditions") if k in sec}}
            kw[name] = typ(**sec)
        if kw["mode"] == "geometry":  # the model records which labels it learns (map build reads them)
            g = kw["geometry"]
            cells = PlaceCells(g.cell_m, kw["model"].num_classes, g.parent_cell_m, g.parents).name()
            if kw["model"].place_cells not in ("", cells):
                raise InputError(f"model.place_cells {kw['model'].place_cells!r} disagrees with the geometry "
                                 f"section ({cells})")
            kw["model"] = ModelConfig.from_dict({**kw["model"].to_dict(), "place_cells": cells})
        elif kw["model"].place_cells:
            raise InputError("model.place_cells is set by mode: geometry only")
        if kw["loss"].label_prior not in ("data", "uniform", "sinkhorn"):
            raise InputError("loss.label_prior must be 'data', 'uniform' or 'sinkhorn', "
                             f"got {kw['loss'].label_prior!r}")
        return cls(**kw)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file() and (CONFIG_DIR / path.name).is_file():
            path = CONFIG_DIR / path.name
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read training config {path}: {exc}") from exc
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["geometry"]["scale_range"] = list(self.geometry.scale_range)
        d["geometry"]["extra_conditions"] = list(self.geometry.extra_conditions)
        return d


@dataclass(frozen=True)
class TrainResult:
    weights: Path  # plain state dict
    config: Path  # model.yaml
    metrics: Path  # metrics.json
    plot: Path
    seconds: float  # wall time of this invocation
    final: dict[str, float]  # last epoch's metrics


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

