"""`segloc eval --bag` refuses, before any graph starts, inputs that used to run and report 0 %
or fail inside a node: a map labelled by another model, a truncated map, a bag without images."""

from __future__ import annotations

import pytest

from segloc_ros.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_world, untrained_model):
    """A map of the tiny world labelled by the untrained model (not the shipped one) and a bag."""
    from segloc_core.maps.build import BuildConfig, build_world_map
    from segloc_core.maps.format import save_map
    from segloc_core.net.infer import load_segmenter
    from segloc_core.world import load_world, write_world_bag

    root = tmp_path_factory.mktemp("eval_inputs")
    seg = load_segmenter(untrained_model, "torch", threads=1)
    map_path = save_map(build_world_map(tiny_world, seg, BuildConfig(min_agreement=0.0), progress=False),
                        root / "other_model.segmap")
    bag = write_world_bag(load_world(tiny_world), "night", root / "bag")
    return root, map_path, bag, untrained_model, tiny_world


def _run(capsys, *args):
    code = main(["eval", *map(str, args)])
    return code, capsys.readouterr().err


def test_map_of_another_model_is_refused_before_replay(inputs, capsys, tmp_path):
    root, map_path, bag, _, _ = inputs
    code, err = _run(capsys, "--bag", bag, "--map", map_path, "--out", tmp_path / "out")
    assert code == 4 and "labelled by model" in err and "Rebuild the map" in err
    assert not (tmp_path / "out").exists()  # no graph was started, no report written


def test_truncated_map_names_the_damage(inputs, capsys, tmp_path):
    root, map_path, bag, model, _ = inputs
    cut = tmp_path / "cut.segmap"
    cut.write_bytes(map_path.read_bytes()[:5000])
    code, err = _run(capsys, "--bag", bag, "--map", cut, "--model", model, "--out", tmp_path / "out")
    assert code == 4 and "truncated" in err


def test_bag_without_images_is_refused_even_with_ground_truth_file(inputs, capsys, tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    root, map_path, bag, model, _ = inputs
    store = get_typestore(Stores.ROS2_KILTED)
    string = store.types["std_msgs/msg/String"]
    empty = tmp_path / "no_images"
    with Writer(empty, version=9) as writer:
        conn = writer.add_connection("/chatter", string.__msgtype__, typestore=store)
        writer.write(conn, 1, store.serialize_cdr(string(data="x"), string.__msgtype__))
    gt = tmp_path / "gt.tum"
    gt.write_text("1.0 0 0 0 0 0 0 1\n")
    code, err = _run(capsys, "--bag", empty, "--map", map_path, "--model", model, "--ground-truth", gt,
                     "--out", tmp_path / "out")
    assert code == 4 and "no sensor_msgs/Image topic" in err


def test_localize_writes_tum_kapture_and_csv(inputs, capsys, tmp_path):
    """`segloc localize` (listed in --help, failed before) localizes a kapture query set and writes
    the poses; a map of another model is refused."""
    import csv
    import json

    from segloc_core.eval.trajectory_metrics import read_kapture_trajectory, read_tum

    root, map_path, bag, model, world = inputs
    out = tmp_path / "loc"
    assert main(["localize", str(world / "night"), "--map", str(map_path), "--model", str(model),
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["queries"] == 12 and summary["skipped"] == 0
    rows = list(csv.DictReader(open(out / "localize.csv")))
    assert len(rows) == 12 and all(r["image"] for r in rows)
    assert sum(r["accepted"] == "True" for r in rows) == summary["accepted"]
    assert len(read_tum(out / "poses.tum").stamps_ns) == summary["accepted"]
    records = (out / "kapture" / "sensors" / "records_camera.txt").read_text().splitlines()
    assert len([r for r in records if not r.startswith("#")]) == 12
    if summary["accepted"]:
        assert len(read_kapture_trajectory(out / "kapture").stamps_ns) == summary["accepted"]
    code = main(["localize", str(world / "night"), "--map", str(map_path), "--out", str(tmp_path / "x")])
    assert code == 4 and "labelled the map" in capsys.readouterr().err


def test_segment_draws_labels_over_real_photos(inputs, capsys, tmp_path):
    """`segloc segment` on real Flickr-style photos of any size and aspect (here: two world frames
    saved as JPEG and one resized to portrait), with a folder and a file as inputs."""
    import json

    import cv2

    from segloc_core.world import load_world

    root, map_path, bag, model, world = inputs
    ds = load_world(world)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, rec in enumerate(ds.frames("summer")[:2]):
        cv2.imwrite(str(photos / f"p{i}.jpg"), ds.rgb(rec)[:, :, ::-1])
    portrait = cv2.resize(ds.rgb(ds.frames("night")[3]), (90, 160))
    cv2.imwrite(str(tmp_path / "portrait.png"), portrait[:, :, ::-1])
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "seg"
    assert main(["segment", str(photos), str(tmp_path / "portrait.png"), "--model", str(model),
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["labels_used"] >= 1 and summary["K"] == 16
    drawn = cv2.imread(str(out / "portrait_labels.png"))
    assert drawn.shape[:2] == (160, 90)  # drawn at the image's own size
    assert (out / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["segment", str(tmp_path / "nothing_here"), "--model", str(model)]) == 4


def test_refinement_from_the_reference_pose_is_reported_beside_the_fix(inputs):
    """`localize_queries(..., from_reference=True)` (used by `segloc bench place`) also refines each
    posed query from its reference pose, as an /initialpose: where the labels alone lead."""
    import dataclasses

    from segloc_core.localize.localizer import PriorSource, localize_queries
    from segloc_core.maps.format import load_map
    from segloc_core.maps.query_sets import load_query_set
    from segloc_core.net.infer import load_segmenter

    root, map_path, bag, model, world = inputs
    queries = load_query_set(world / "night")[:3]
    queries[2] = dataclasses.replace(queries[2], T_cam_world_gt=None)
    seg = load_segmenter(model, "torch", threads=1)
    results = localize_queries(queries, seg, load_map(map_path), progress=False, from_reference=True)
    for q, r in zip(queries[:2], results[:2]):
        at_ref = r.fix_from_reference
        assert at_ref is not None and at_ref.source == PriorSource.INITIALPOSE
        assert at_ref.T_cam_world_prior is q.T_cam_world_gt and r.fix.source == PriorSource.RETRIEVAL
    assert results[2].fix_from_reference is None  # no reference pose, nothing to start from
    assert all(r.fix_from_reference is None for r in localize_queries(queries[:1], seg, load_map(map_path),
                                                                      progress=False))
