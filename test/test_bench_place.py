"""`segloc bench place`: the similarity that carries a leave-one-out map's poses into the reference frame."""

from __future__ import annotations

import numpy as np

from segloc_core.bench.place import similarity, summarize, to_map, to_reference
from segloc_core.geometry import Pose, pose_error


def test_similarity_recovers_scale_rotation_translation_and_moves_cameras():
    rng = np.random.default_rng(0)
    R = Pose.from_rotvec(rng.normal(size=3), np.zeros(3)).R
    s, t = 3.7, rng.normal(size=3) * 5
    cams_ref = [Pose.from_rotvec(rng.normal(size=3) * 0.5, rng.normal(size=3) * 4) for _ in range(9)]
    # the same cameras in a map frame: x_ref = s R x_map + t
    cams_map = []
    for T in cams_ref:
        c_map = R.T @ (T.center() - t) / s
        R_cam_map = T.R @ R
        cams_map.append(Pose(R_cam_map, -R_cam_map @ c_map))
    src = np.stack([T.center() for T in cams_map])
    dst = np.stack([T.center() for T in cams_ref])
    s2, R2, t2 = similarity(src, dst + rng.normal(size=dst.shape) * 1e-6)
    assert abs(s2 - s) < 1e-4 and np.allclose(R2, R, atol=1e-5) and np.allclose(t2, t, atol=1e-4)
    for Tm, Tr in zip(cams_map, cams_ref):
        dt, dr = pose_error(to_reference(Tm, s2, R2, t2), Tr)
        assert dt < 1e-4 and dr < 1e-3
        dt, dr = pose_error(to_map(Tr, s2, R2, t2), Tm)  # the reference pose as a start in the map
        assert dt < 1e-4 and dr < 1e-3
    # a wrong similarity is seen: the errors are not zero
    assert pose_error(to_reference(cams_map[0], 1.0, np.eye(3), np.zeros(3)), cams_ref[0])[0] > 0.1


def test_summary_counts_only_accepted_fixes_and_wrong_accepted_ones():
    rows = [{"prior": [0.3, 30.0], "fix": [0.01, 1.0], "accepted": True, "from_reference": [0.2, 1.0]},
            {"prior": [0.04, 4.0], "fix": [0.02, 1.0], "accepted": False, "from_reference": [0.02, 1.0]},
            {"prior": [0.5, 40.0], "fix": [0.4, 20.0], "accepted": True, "from_reference": [0.04, 3.0]}]
    # the same maps without the refiner bias correction (`localize.bias`), reported beside
    for r, raw, ok in zip(rows, ([0.3, 1.0], [0.02, 1.0], [0.4, 20.0]), (True, True, True)):
        r.update(fix_uncorrected=raw, from_reference_uncorrected=raw, accepted_uncorrected=ok, bias_corrected=True)
    got = summarize(rows)
    assert got["PA"] == [0, 1, 1] and got["PR"] == [1, 1, 1]
    assert got["from_reference"] == [0, 2, 3]  # gates ignored: where refinement from the truth lands
    assert got["accepted"] == 2 and got["accepted_wrong"] == 1
    assert got["PR_uncorrected"] == [0, 1, 1] and got["from_reference_uncorrected"] == [0, 1, 1]
    assert got["accepted_wrong_uncorrected"] == 2 and got["bias_corrected"] == 3
