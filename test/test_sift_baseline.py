"""The classical baseline (`segloc eval --queries ... --method sift`): SIFT + PnP with pycolmap on the
same queries and retrieval as segloc, reported beside PA and PR with its map's bytes."""

import json

import numpy as np

from segloc_core.eval.sift_baseline import SIFT_MAP_VERSION, match


def test_match_keeps_distinctive_mutual_pairs_only():
    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, (50, 128)).astype(np.uint8)
    query = db[[3, 7, 7, 20]].astype(np.float32) + rng.normal(0, 2, (4, 128))
    query[3] = (db[20].astype(np.float32) + db[21]) / 2  # halfway between two: fails the ratio test
    pairs = match(query, db)
    # 7 is matched once (mutual: the database descriptor's nearest query), 20/21 not at all
    assert sorted(map(tuple, pairs.tolist())) in ([(0, 3), (1, 7)], [(0, 3), (2, 7)])
    assert match(np.zeros((0, 128)), db).shape == (0, 2) and SIFT_MAP_VERSION >= 1


def test_eval_reports_the_sift_baseline_beside_segloc(graph_assets, tmp_path, monkeypatch):
    from segloc_ros.cli import main

    monkeypatch.setenv("SEGLOC_HOME", str(tmp_path / "home"))  # the SIFT map cache

    world = graph_assets["root"] / "world"
    out = tmp_path / "report"
    assert main(["eval", "--queries", str(world / "overcast"), "--map", str(graph_assets["map"]),
                 "--method", "sift", "--out", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    sift = doc["methods"]["SIFT-PnP (classical baseline)"]["recall"]
    # overcast against the summer traversal, from segloc's retrieval: SIFT finds most of them
    assert sift["0.5m_5deg"] >= 0.6, sift
    sizes = doc["map_bytes"]
    assert sizes["sift_points"] > 100 and sizes["sift"] >= 128 * sizes["sift_observations"]
    assert "invert" in doc["sift_privacy"]
    assert (out / "trajectory_sift-pnp.png").is_file() and any((tmp_path / "home" / "sift").glob("sift-*.npz"))
