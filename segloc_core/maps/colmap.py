"""Map geometry from COLMAP models, kapture data sets and plain images (pycolmap).

Three ways in, one result (`map_build.MapGeometry`):
- `colmap_geometry`: an existing COLMAP reconstruction (text or binary): its points and tracks,
  or, for a model of posed images without points, triangulation as below;
- `posed_images_geometry` (`kapture_geometry`): images with known poses: SIFT features,
  exhaustive matching, then pycolmap triangulation with the poses held fixed;
- `sfm_geometry`: images alone: SIFT, exhaustive matching, incremental mapping (the map is then in
  the reconstruction's arbitrary frame and scale).
Appearance (SIFT) only lives in pycolmap's temporary working database; the map keeps none of it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import cv2
import numpy as np

from segloc_core.errors import InputError, require
from segloc_core.geometry import Camera, Pose
from segloc_core.maps.build import MapGeometry, Observations


def camera_from_pycolmap(c) -> Camera:
    """geometry.Camera of a pycolmap camera (SIMPLE_PINHOLE becomes the equivalent PINHOLE)."""
    model, params = c.model.name, np.asarray(c.params, np.float64)
    if model == "SIMPLE_PINHOLE":  # f cx cy is PINHOLE with fx = fy
        model, params = "PINHOLE", np.array([params[0], params[0], params[1], params[2]])
    return Camera(model, int(c.width), int(c.height), params)


def _pose(image) -> Pose:
    """T_cam_world of a registered pycolmap Image (quaternion x, y, z, w like scipy and ROS)."""
    cfw = image.cam_from_world()
    return Pose.from_quat_xyzw(np.asarray(cfw.rotation.quat), np.asarray(cfw.translation))


def _rgb_loader(image_dir: Path, names: tuple[str, ...]):
    def load(i: int) -> np.ndarray:
        path = image_dir / names[i]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path}: missing or not a readable image")
        return np.ascontiguousarray(bgr[:, :, ::-1])
    return load


def read_reconstruction(model_dir: Path):
    pycolmap = require("pycolmap")
    model_dir = Path(model_dir)
    if not any((model_dir / f"cameras.{ext}").exists() for ext in ("txt", "bin")):
        raise InputError(f"{model_dir}: no COLMAP model (cameras/images/points3D .txt or .bin)")
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError on malformed files
        raise InputError(f"{model_dir}: unreadable COLMAP model ({exc})") from exc


def geometry_from_reconstruction(rec, image_dir: Path, source: str) -> MapGeometry:
    """Points, tracks and registered images of a pycolmap Reconstruction."""
    image_ids = sorted(i for i, im in rec.images.items() if im.has_pose)
    if not image_ids:
        raise InputError(f"{source}: no registered image")
    row = {iid: j for j, iid in enumerate(image_ids)}
    images = [rec.images[i] for i in image_ids]
    point_ids = sorted(rec.points3D)
    xyz = np.array([rec.points3D[p].xyz for p in point_ids], np.float64).reshape(-1, 3)
    obs_p, obs_i, obs_uv = [], [], []
    for j, pid in enumerate(point_ids):
        for el in rec.points3D[pid].track.elements:
            if el.image_id in row:
                obs_p.append(j)
                obs_i.append(row[el.image_id])
                obs_uv.append(rec.images[el.image_id].points2D[el.point2D_idx].xy)
    poses = [_pose(im) for im in images]
    names = tuple(im.name for im in images)
    return MapGeometry(np.asarray(xyz), Observations(np.asarray(obs_p, np.int64), np.asarray(obs_i, np.int64),
                                                     np.asarray(obs_uv, np.float64).reshape(-1, 2)),
                       names, tuple(poses), tuple(camera_from_pycolmap(rec.cameras[im.camera_id]) for im in images),
                       _rgb_loader(Path(image_dir), names), source)


def colmap_geometry(model_dir: Path, image_dir: Path, max_image_size: int = 1600) -> MapGeometry:
    """Import a COLMAP model (text or binary): its points and tracks, or, when it has posed images
    but no points, points triangulated from SIFT matches with those poses held fixed. Of unknown
    scale (a COLMAP model usually comes from SfM)."""
    rec = read_reconstruction(model_dir)
    source = f"colmap:{model_dir}"
    if rec.num_points3D() > 0:
        geometry = geometry_from_reconstruction(rec, image_dir, source)
    else:
        images = [im for im in rec.images.values() if im.has_pose]
        geometry = posed_images_geometry(Path(image_dir), [im.name for im in images], [_pose(im) for im in images],
                                         [camera_from_pycolmap(rec.cameras[im.camera_id]) for im in images],
                                         source, max_image_size)
    return dataclasses.replace(geometry, units="units")


def sfm_geometry(image_dir: Path, work_dir: Path | None = None, max_image_size: int = 1600) -> MapGeometry:
    """Structure from motion on images alone: SIFT, exhaustive matching, incremental mapping (the
    map is of unknown scale)."""
    pycolmap = require("pycolmap")
    image_dir = Path(image_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "database.db"
        # AUTO: a camera per image size / EXIF model, so photos from several cameras all take part
        _extract(pycolmap, db, image_dir, max_image_size, mode="AUTO")
        _match(pycolmap, db)
        recs = pycolmap.incremental_mapping(str(db), str(image_dir), str(work / "sparse"),
                                            options=_mapping_options(pycolmap))
        if not recs:
            raise InputError(f"{image_dir}: structure from motion registered no images (too few matches)")
        best = max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
        return dataclasses.replace(geometry_from_reconstruction(best, image_dir, f"sfm:{image_dir}"), units="units")


def _mapping_options(pycolmap):
    """COLMAP defaults assume a photo collection; a driving camera moves forward with small
    baselines, which the default initial-pair checks reject. Relaxed for that case."""
    options = pycolmap.IncrementalPipelineOptions()
    options.mapper.init_min_tri_angle = 4.0  # degrees (default 16)
    options.mapper.init_max_forward_motion = 0.999  # default 0.95 rejects driving sequences
    options.mapper.init_min_num_inliers = 30  # default 100
    options.min_model_size = 2
    options.num_threads = 2
    return options


def _extract(pycolmap, db: Path, image_dir: Path, max_image_size: int, image_names: list[str] | None = None,
             camera: Camera | None = None, mode: str = "SINGLE") -> None:
    """SIFT into the database `db`. mode: SINGLE (one camera; `camera`'s intrinsics when known),
    PER_IMAGE, or AUTO (photos grouped by size and EXIF, as a folder of mixed cameras needs)."""
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    extraction.num_threads = 2
    extraction.sift.peak_threshold = 0.002  # default 0.0067 finds too few on small or smooth images
    reader = pycolmap.ImageReaderOptions()
    if camera is not None:  # known intrinsics: keep them instead of guessing a focal length
        reader.camera_model = camera.model
        reader.camera_params = ",".join(repr(float(v)) for v in camera.params)
    pycolmap.extract_features(str(db), str(image_dir), image_names=image_names or [],
                              camera_mode=getattr(pycolmap.CameraMode, mode), reader_options=reader,
                              extraction_options=extraction)


def _match(pycolmap, db: Path, sequential_overlap: int = 0) -> None:
    """Every pair, or with `sequential_overlap` > 0 each image with that many next ones in name order
    (a traversal: every pair of 300 frames is 45k pairs)."""
    if sequential_overlap > 0:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = sequential_overlap
        pairing.loop_detection = False
        pycolmap.match_sequential(str(db), pairing_options=pairing)
    else:
        pycolmap.match_exhaustive(str(db))


def _set_known_cameras(pycolmap, db: Path, cameras: dict[str, Camera]) -> None:
    """Give every image of `db` the intrinsics it was recorded with (features were extracted with
    one camera per image), before matching verifies geometry with them."""
    database = pycolmap.Database.open(str(db))
    try:
        for image in database.read_all_images():
            known = cameras[image.name]
            cam = pycolmap.Camera(model=known.model, width=known.width, height=known.height,
                                  params=list(known.params))
            cam.camera_id = image.camera_id
            cam.has_prior_focal_length = True
            database.update_camera(cam)
    finally:
        database.close()


def triangulate_posed(image_dir: Path, names: list[str], poses: list[Pose], cameras: list[Camera], work: Path,
                      source: str, max_image_size: int = 1600, sequential_overlap: int = 0):
    """SIFT matches between images whose poses T_cam_world and cameras are known (held fixed),
    triangulated: the pycolmap Reconstruction; its features stay in `work`/database.db. Images
    may come from several cameras (kapture sensors, COLMAP cameras)."""
    pycolmap = require("pycolmap")
    by_name = dict(zip(names, poses))
    db = Path(work) / "database.db"
    single = len({(c.model, c.width, c.height, tuple(c.params)) for c in cameras}) == 1
    _extract(pycolmap, db, Path(image_dir), max_image_size, list(names), cameras[0] if single else None,
             "SINGLE" if single else "PER_IMAGE")
    if not single:
        _set_known_cameras(pycolmap, db, dict(zip(names, cameras)))
    _match(pycolmap, db, sequential_overlap)
    rec = pycolmap.Reconstruction()
    database = pycolmap.Database.open(str(db))
    try:
        for cam in database.read_all_cameras():
            rec.add_camera(cam)
        for rig in database.read_all_rigs():
            rec.add_rig(rig)
        frames = {f.frame_id: f for f in database.read_all_frames()}
        for image in database.read_all_images():
            frame, pose = frames[image.frame_id], by_name[image.name]
            frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(pose.quat_xyzw()), pose.t)
            rec.add_frame(frame)
            rec.add_image(image)
            rec.register_frame(frame.frame_id)
    finally:
        database.close()
    (Path(work) / "tri").mkdir(exist_ok=True)
    rec = pycolmap.triangulate_points(rec, str(db), str(image_dir), str(Path(work) / "tri"))
    if rec.num_points3D() == 0:
        raise InputError(f"{source}: triangulation produced no point (too few matches)")
    return rec


def posed_images_geometry(image_dir: Path, names: list[str], poses: list[Pose], cameras: list[Camera],
                          source: str, max_image_size: int = 1600) -> MapGeometry:
    """Triangulate SIFT matches between images whose poses T_cam_world (and cameras) are known."""
    with tempfile.TemporaryDirectory() as tmp:
        rec = triangulate_posed(image_dir, names, poses, cameras, Path(tmp), source, max_image_size)
        return geometry_from_reconstruction(rec, Path(image_dir), source)


def kapture_geometry(kapture_dir: Path, max_image_size: int = 1600) -> MapGeometry:
    """Posed images of a kapture folder (rigs resolved, each sensor's intrinsics), triangulated."""
    names, poses, cams = read_kapture_posed_images(kapture_dir)
    return posed_images_geometry(Path(kapture_dir) / "sensors" / "records_data", names, poses, cams,
                                 f"kapture:{kapture_dir}", max_image_size)


def read_kapture_posed_images(kapture_dir: Path) -> tuple[list[str], list[Pose], list[Camera]]:
    """Camera records with a trajectory pose from a kapture 1.x folder (sensors/*.txt): the
    camera's own pose, or, for a camera in a rig (rigs.txt), the rig's pose at that timestamp
    composed with the camera's pose in the rig (kapture stores both as 'device from world' /
    'sensor from rig': T_cam_world = T_cam_rig T_rig_world)."""
    sensors_dir = Path(kapture_dir) / "sensors"

    def rows(name: str, required: bool = True) -> list[list[str]]:
        path = sensors_dir / name
        if not path.exists():
            if not required:
                return []
            raise InputError(f"{path}: missing (not a kapture folder?)")
        return [[f.strip() for f in line.split(",")] for line in path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    cams = {}
    for r in rows("sensors.txt"):
        if len(r) >= 4 and r[2] == "camera":
            try:
                model, w, h, params = r[3], int(r[4]), int(r[5]), np.array(r[6:], np.float64)
            except (IndexError, ValueError) as exc:
                raise InputError(f"{sensors_dir / 'sensors.txt'}: bad camera row {r}") from exc
            if model == "SIMPLE_PINHOLE":
                model, params = "PINHOLE", np.array([params[0], params[0], params[1], params[2]])
            cams[r[0]] = Camera(model, w, h, params)
    def pose(r: list[str], what: str) -> Pose:
        try:
            qw, qx, qy, qz, tx, ty, tz = (float(v) for v in r[2:9])
        except ValueError as exc:
            raise InputError(f"{sensors_dir / what}: bad pose row {r}") from exc
        return Pose.from_quat_xyzw(np.array([qx, qy, qz, qw]), np.array([tx, ty, tz]))

    poses = {(r[0], r[1]): pose(r, "trajectories.txt") for r in rows("trajectories.txt")}
    in_rig = {r[1]: (r[0], pose(r, "rigs.txt")) for r in rows("rigs.txt", required=False)}  # cam -> (rig, T_cam_rig)
    names, out_poses, out_cams = [], [], []
    for r in rows("records_camera.txt"):
        stamp, cam = r[0], r[1]
        if cam not in cams:
            continue
        if (stamp, cam) in poses:
            T = poses[(stamp, cam)]
        elif cam in in_rig and (stamp, in_rig[cam][0]) in poses:
            T = in_rig[cam][1] @ poses[(stamp, in_rig[cam][0])]
        else:
            continue
        names.append(r[2])
        out_poses.append(T)
        out_cams.append(cams[cam])
    if len(names) < 2:
        raise InputError(f"{kapture_dir}: fewer than 2 posed camera records")
    return names, out_poses, out_cams
