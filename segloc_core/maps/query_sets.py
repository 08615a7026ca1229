"""Query image sets for ROS-free localization and evaluation: kapture or COLMAP folders.

A query set is images with intrinsics and, optionally, reference poses (for evaluation). Both
on-disk forms people already have are read: a kapture 1.x folder (`sensors/sensors.txt`,
`records_camera.txt`, `trajectories.txt`, images under `sensors/records_data/`; the default
world's condition folders are exactly that) and a COLMAP model (text or binary) with its images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.geometry import Camera, Pose
from segloc_core.maps.colmap import camera_from_pycolmap, read_kapture_posed_images, read_reconstruction


@dataclass(frozen=True)
class QueryImage:
    name: str
    image_path: Path
    camera: Camera
    T_cam_world_gt: Pose | None  # reference pose, world->camera; None when unknown


def _kapture(folder: Path) -> list[QueryImage]:
    names, poses, cameras = read_kapture_posed_images(folder)
    data = folder / "sensors" / "records_data"
    return [QueryImage(n, data / n, c, p) for n, p, c in zip(names, poses, cameras)]


def _colmap(model_dir: Path, images_dir: Path) -> list[QueryImage]:
    rec = read_reconstruction(model_dir)
    out = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        cfw = image.cam_from_world()
        pose = Pose.from_quat_xyzw(np.asarray(cfw.rotation.quat), np.asarray(cfw.translation))
        camera = camera_from_pycolmap(rec.cameras[image.camera_id])
        out.append(QueryImage(image.name, images_dir / image.name, camera, pose))
    return out


def load_query_set(path: Path | str, images_dir: Path | str | None = None) -> list[QueryImage]:
    """Queries of a kapture folder or a COLMAP model directory (images in `images_dir`,
    default `<model>/../images`). InputError says which layouts were looked for."""
    path = Path(path)
    if (path / "sensors" / "records_camera.txt").is_file():
        queries = _kapture(path)
    elif any((path / f"cameras.{ext}").is_file() for ext in ("txt", "bin")):
        queries = _colmap(path, Path(images_dir) if images_dir else path.parent / "images")
    else:
        raise InputError(f"{path}: neither a kapture folder (sensors/records_camera.txt) nor a "
                         "COLMAP model (cameras.txt/.bin)")
    missing = [q.image_path for q in queries if not q.image_path.is_file()]
    if missing:
        raise InputError(f"{path}: {len(missing)} query image(s) missing, e.g. {missing[0]}")
    return queries
