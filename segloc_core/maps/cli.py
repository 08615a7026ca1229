"""`segloc map`: build, import and inspect labeled maps.

The map type and its file format live in `map_format`, building (world, voting, descriptors) in
`map_build`, COLMAP / kapture / SfM geometry in `map_colmap`; this module is the entry point that
ties them to the segmentation model and the command line, and re-exports the map's public names.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segloc_core.cli import non_negative_int
from segloc_core.errors import InputError
from segloc_core.maps.build import BuildConfig, MapGeometry, label_and_describe
from segloc_core.maps.format import LabeledMap, MapSizeReport, load_map, save_map, size_report
from segloc_core.net import segmenters

__all__ = ["LabeledMap", "load_map", "save_map", "size_report", "MapSizeReport", "BuildConfig",
           "MapSource", "build_map", "configure_cli"]

SOURCES = ("world", "colmap", "kapture", "images", "bag")
PLACE_CONFIG = "segloc_place.yaml"  # `--train-model` (segloc_core/configs/)


@dataclass(frozen=True)
class MapSource:
    """Where the geometry comes from.

    world: `path` is a rendered world folder; colmap: `path` is a COLMAP model folder (text or
    binary) and `image_dir` its images; kapture: `path` is a kapture folder (posed images under
    sensors/records_data); images: `path` is a folder of images (SfM); bag: `path` is a rosbag2 of a
    mapping run (`segloc_core.maps.bag_source`: images posed by a pose topic, or SfM without one).
    """

    kind: str
    path: Path
    image_dir: Path | None = None
    # "m" or "units" (unknown scale); None: what the source says of itself (MapGeometry.units):
    # metres for a rendered world, kapture and a posed bag (trajectories from SLAM / RTK), unknown
    # for COLMAP models, image folders and unposed bags (structure from motion)
    units: str | None = None
    image_topic: str | None = None  # bag: the camera topic (default: the bag's only Image topic)
    pose_topic: str | None = None  # bag: PoseStamped/Odometry of the robot in the map (default /ground_truth/pose)

    def __post_init__(self) -> None:
        if self.kind not in SOURCES:
            raise InputError(f"map source must be one of {SOURCES}, got {self.kind!r}")
        if self.units not in (None, "m", "units"):
            raise InputError(f"map units must be 'm' or 'units', got {self.units!r}")
        if not Path(self.path).exists():
            raise InputError(f"{self.path}: map source ({self.kind}) does not exist")


def source_geometry(source: MapSource, config: BuildConfig = BuildConfig(), progress: bool = True) -> MapGeometry:
    import dataclasses

    from segloc_core.maps import colmap as map_colmap

    if source.kind == "world":
        from segloc_core.maps.build import world_geometry

        geometry = world_geometry(Path(source.path), config, progress=progress)
    elif source.kind == "colmap":
        image_dir = source.image_dir or Path(source.path).parent / "images"
        geometry = map_colmap.colmap_geometry(Path(source.path), Path(image_dir))
    elif source.kind == "kapture":
        geometry = map_colmap.kapture_geometry(Path(source.path))
    elif source.kind == "bag":
        geometry = _bag_geometry(source, config)
    else:
        geometry = map_colmap.sfm_geometry(Path(source.path))
    return dataclasses.replace(geometry, units=source.units) if source.units else geometry


def _bag_geometry(source: MapSource, config: BuildConfig) -> MapGeometry:
    """Images of a mapping bag (kept under $SEGLOC_HOME/bag_images/<bag>/, read again for labels),
    triangulated with their poses (metric), or through SfM without a pose topic."""
    from segloc_core.maps import colmap as map_colmap
    from segloc_core.maps.bag_source import extract_bag
    from segloc_core.paths import home

    bag = Path(source.path)
    images = extract_bag(bag, home() / "bag_images" / bag.resolve().name, source.image_topic, source.pose_topic,
                         stride=config.frame_stride)
    if images.poses is None:
        return map_colmap.sfm_geometry(images.image_dir)
    return map_colmap.posed_images_geometry(images.image_dir, images.names, images.poses, images.cameras, f"bag:{bag}")


def build_map(source: MapSource, out: Path, model_path: Path | None = None,
              config: BuildConfig = BuildConfig(), progress: bool = True,
              segmenter: str = "model", train_config: Path | str | None = None) -> LabeledMap:
    """Geometry from `source`, labels and descriptors from the model (or the oracle, on a world:
    `segloc_core.net.segmenters`), written to `out`. With `train_config`, a model for this place is
    trained on the geometry first (`maps.place_model`, started from `model_path` or the shipped
    weights), exported to `<out>.onnx`, and labels the map."""
    from segloc_core.net.segmenters import open_segmenter

    world = Path(source.path) if source.kind == "world" else None
    geometry = source_geometry(source, config, progress)
    if train_config is not None:
        from segloc_core.maps.place_model import train_place_model

        if segmenter != "model":
            raise InputError("--train-model trains a network: it cannot go with --segmenter oracle")
        init = model_path.with_suffix(".pt") if model_path is not None else None
        model_path = train_place_model(geometry, Path(out).with_suffix(".onnx"), train_config, init, progress)
    segmenter = open_segmenter(segmenter, model_path, world=world)
    labeled = label_and_describe(geometry, segmenter, config, progress)
    save_map(labeled, out)
    return labeled


def cached_world_map(world: Path, segmenter, out: Path, progress: bool = True,
                     announce: Callable[[str], None] = lambda _: None) -> Path:
    """`out`: the world's mapping traversal labelled by `segmenter`, rebuilt only when the world,
    the segmenter (its model hash) or the map-building code changed (key in `<out>.key.json`)."""
    import hashlib
    import json

    from segloc_core.maps import build as map_build
    from segloc_core.maps import format as map_format
    from segloc_core.maps.build import world_geometry

    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (map_build, map_format)))
    key = {"world": json.loads((Path(world) / "world.json").read_text()).get("config_hash"),
           "model": segmenter.model_hash, "map_code": code.hexdigest()[:16]}
    key_file = out.with_suffix(".key.json")
    if out.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
        announce(f"map {out} is up to date")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    announce(f"building the map from the mapping traversal -> {out}")
    save_map(label_and_describe(world_geometry(Path(world), progress=progress), segmenter,
                                progress=progress), out)
    key_file.write_text(json.dumps(key))
    return out


def plot_map(m: LabeledMap, out: Path, max_points: int = 200_000) -> Path:
    """Top view: points coloured by label (shade = confidence), database camera centres on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ids = np.random.default_rng(0).permutation(len(m))[:max_points]
    xyz = m.xyz_of(ids)
    centres = np.stack([m.images.T_cam_world(i).center() for i in range(len(m.images))])
    fig, ax = plt.subplots(figsize=(9, 9), dpi=110)
    colors = plt.get_cmap("tab20")(m.labels[ids] % 20)
    colors[:, 3] = 0.15 + 0.85 * m.confidence[ids]
    ax.scatter(xyz[:, 0], xyz[:, 1], s=0.3, c=colors, linewidths=0)
    ax.plot(centres[:, 0], centres[:, 1], "k.-", ms=2, lw=0.6, label="database cameras")
    ax.set_aspect("equal")
    ax.set_xlabel(f"x [{m.meta.units}]")
    ax.set_ylabel(f"y [{m.meta.units}]")
    ax.set_title(f"{len(m)} points, K={m.meta.K} (colour = label mod 20, opacity = confidence)")
    ax.legend(loc="upper right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def label_report(m: LabeledMap, poses: int = 50) -> list[str]:
    """Label quality of a map (`segloc_core.label_metrics`): label sharing by distance against
    chance, and the effective labels among the points each of `poses` database images sees."""
    import numpy as np

    from segloc_core import label_metrics

    share = label_metrics.label_share_by_distance(m.xyz, m.labels)
    images = np.linspace(0, len(m.images) - 1, min(poses, len(m.images))).astype(int)
    eff = [label_metrics.effective_labels(m.labels[m.points_of_images(np.array([i]))]) for i in images]
    dist = "  ".join(f"{k} {v:.2f}" for k, v in share.items() if k != "chance")
    return [f"labels            {len(np.unique(m.labels))} used, {label_metrics.effective_labels(m.labels):.1f} "
            f"effective; {np.median(eff):.1f} effective among an image's points (median)",
            f"label sharing     {dist}  (chance {share['chance']:.2f}; place labels fall to chance "
            "within a few metres)"]


def bias_text(m: LabeledMap, applied: bool = True) -> str:
    """The map's measured refiner bias and spread (`localize.bias`) in words; `applied`: whether the
    localizer corrects fixes by it (`LocalizerConfig.correct_refiner_bias`)."""
    b = m.meta.refiner_bias
    if not b:
        return "not measured (a map from before format 1.1, or too few mapping images converged: fixes are not corrected)"
    rho = ", ".join(f"{v:+.3f}" for v in b[:3])
    deg = ", ".join(f"{math.degrees(v):+.2f}" for v in b[3:])
    use = "fixes are corrected by it" if applied else "not applied (correct_refiner_bias false)"
    text = f"{rho} {m.meta.units} (camera right, down, forward), {deg} deg; {use}"
    if len(m.meta.refiner_spread) == 36:
        std = [math.sqrt(max(m.meta.refiner_spread[7 * i], 0.0)) for i in range(6)]
        text += (f"; spread (std) {', '.join(f'{v:.3f}' for v in std[:3])} {m.meta.units}, "
                 f"{', '.join(f'{math.degrees(v):.2f}' for v in std[3:])} deg")
    return text + " (measured on mapping images refined from their own poses)"


def _cli_info(args: argparse.Namespace) -> int:
    report = size_report(Path(args.map))
    m = load_map(Path(args.map))
    print(f"map               {args.map}")
    print(f"source            {m.meta.source}")
    print(f"model             {m.meta.model_hash}  (frame {m.meta.frame_id}, units {m.meta.units}, "
          f"created {m.meta.created_utc})")
    scale = "metric" if m.meta.units == "m" else "unknown scale: the localizer's distances follow the scene depth"
    print(f"scene depth       {m.meta.scene_depth:.3g} {m.meta.units} (median, points in their images; {scale})")
    print(f"refiner bias      {bias_text(m)}")
    print("\n".join(report.lines()))
    print("\n".join(label_report(m)))
    if args.plot:
        print(f"top view          {plot_map(m, Path(args.plot))}")
    return 0


def _cli_build(args: argparse.Namespace) -> int:
    from segloc_core.paths import map_path, world_dir

    kind = args.source
    path = Path(args.path) if args.path else (world_dir("default") if kind == "world" else None)
    if path is None:
        raise InputError(f"--source {kind} needs a path")
    out = Path(args.out) if args.out else map_path("default" if kind == "world" and not args.path else path.name)
    config = BuildConfig(min_agreement=args.min_agreement, whitening_dim=args.whitening_dim,
                         voxel_m=args.voxel, pixel_stride=args.pixel_stride, frame_stride=args.frame_stride,
                         bias_images=args.bias_images)
    m = build_map(MapSource(kind, path, Path(args.images) if args.images else None, args.units,
                            args.image_topic, args.pose_topic), out,
                  Path(args.model) if args.model else None, config, segmenter=args.segmenter,
                  train_config=args.train_config)
    report = size_report(out)
    print(f"wrote {out}: {len(m)} points, {len(m.images)} images, {report.bytes_per_point:.2f} bytes/point")
    if args.train_config:
        print(f"place model {out.with_suffix('.onnx')} (localize with --model {out.with_suffix('.onnx')}; "
              f"training curves in {out.parent / (out.stem + '_training')})")
    return 0


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", help="output map (default: $SEGLOC_HOME/maps/<name>.segmap)")
    p.add_argument("--model", help="segmentation model (default: the shipped one)")
    p.add_argument("--segmenter", default="model", help=segmenters.HELP)
    p.add_argument("--train-model", dest="train_config", nargs="?", const=PLACE_CONFIG, default=None,
                   metavar="CONFIG",
                   help="first train a model for this place on the map's images and points (geometry labels, "
                        f"started from --model or the shipped weights; default config {PLACE_CONFIG}), write it "
                        "to <out>.onnx and label the map with it")
    p.add_argument("--images", help="image folder of a COLMAP model (default: <model>/../images)")
    p.add_argument("--image-topic", default=None, help="bag: camera topic (default: the bag's only Image topic)")
    p.add_argument("--pose-topic", default=None,
                   help="bag: PoseStamped or Odometry of the robot in the map frame (default: /ground_truth/pose "
                        "if present; without one: structure from motion)")
    p.add_argument("--units", choices=("m", "units"), default=None,
                   help="whether positions are metric (default: m for world and kapture, units for COLMAP "
                        "and image folders); without metres the localizer's distances follow the scene depth")
    p.add_argument("--min-agreement", type=float, default=BuildConfig.min_agreement,
                   help="drop points whose label got a smaller share of their observations' votes")
    p.add_argument("--whitening-dim", type=int, default=BuildConfig.whitening_dim)
    p.add_argument("--voxel", type=float, default=BuildConfig.voxel_m, help="world: dedup voxel, metres")
    p.add_argument("--pixel-stride", type=int, default=BuildConfig.pixel_stride, help="world: depth subsampling")
    p.add_argument("--frame-stride", type=int, default=BuildConfig.frame_stride, help="world, bag: every n-th frame")
    p.add_argument("--bias-images", type=non_negative_int, default=BuildConfig.bias_images,
                   help="mapping images refined from their own poses to measure the refiner's systematic "
                        "offset, which the localizer corrects (0: not measured, fixes uncorrected)")


def configure_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="map_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="size and content of a map, against SIFT storage")
    info.add_argument("map")
    info.add_argument("--plot", help="write a top-view PNG of the points and cameras here")
    info.set_defaults(func=_cli_info)
    build = sub.add_parser("build", help="build a labeled map (default: the default world, shipped model)")
    build.add_argument("--source", choices=SOURCES, default="world")
    build.add_argument("path", nargs="?", help="world folder, COLMAP model, kapture folder or image folder")
    _add_build_options(build)
    build.set_defaults(func=_cli_build)
    imp = sub.add_parser("import", help="label an existing COLMAP model (text or binary)")
    imp.add_argument("path", help="COLMAP model folder")
    _add_build_options(imp)
    imp.set_defaults(func=_cli_build, source="colmap")
