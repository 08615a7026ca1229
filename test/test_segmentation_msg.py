"""Segmentation messages and pose/covariance conversions used between the nodes."""

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from segloc_core.errors import InputError
from segloc_core.geometry import Camera, Pose
from segloc_core.net.infer import LevelMaps, SegmentationResult
from segloc_core.reductions import REDUCTION_NAMES, level_reductions
from segloc_msgs.msg import ClassMapLevel
from segloc_ros.adapters.pose_msgs import body_to_parent_covariance, change_body_covariance
from segloc_ros.adapters.segmentation_msg import pack_segmentation, unpack_levels

CAMERA = Camera("PINHOLE", 64, 48, [60.0, 60.0, 32.0, 24.0])


def _result(K: int = 12) -> SegmentationResult:
    rng = np.random.default_rng(0)
    levels = []
    for w, h in ((8, 6), (16, 12), (32, 24), (64, 48)):
        logits = rng.normal(0, 3, (K, h, w)).astype(np.float32)
        p = np.exp(logits) / np.exp(logits).sum(0)
        levels.append(LevelMaps(p.astype(np.float32), level_reductions(p.astype(np.float32))))
    return SegmentationResult(levels, rng.normal(size=40).astype(np.float32), (64, 48), "abc", K)


@pytest.mark.parametrize("encoding, top_n", [(ClassMapLevel.ENCODING_DENSE_U8, 0),
                                             (ClassMapLevel.ENCODING_TOPN_U8, 3)])
def test_coarse_levels_with_parent_classes_roundtrip(encoding, top_n):
    """A hierarchical segmenter (the oracle) publishes 4 parent classes on its two coarse levels and
    12 on the fine ones: each level carries its own class count through the message."""
    fine, coarse = _result(12), _result(4)
    result = SegmentationResult(coarse.levels[:2] + fine.levels[2:], fine.descriptor, (64, 48), "abc", 12)
    msg, _ = pack_segmentation(Header(frame_id="cam"), CameraInfo(), result, encoding, top_n)
    assert [lv.num_classes for lv in msg.levels] == [4, 4, 12, 12]
    levels = unpack_levels(msg, CAMERA)
    assert [lv.probs.shape[0] for lv in levels] == [4, 4, 12, 12]
    msg.levels[0].num_classes = 5  # 5 parents cannot divide 12 labels
    with pytest.raises(InputError, match="do not divide"):
        unpack_levels(msg, CAMERA)


@pytest.mark.parametrize("encoding, top_n", [(ClassMapLevel.ENCODING_DENSE_U8, 0),
                                             (ClassMapLevel.ENCODING_TOPN_U8, 3)])
def test_pack_unpack_roundtrip(encoding, top_n):
    result = _result()
    msg, desc = pack_segmentation(Header(frame_id="cam"), CameraInfo(), result, encoding, top_n)
    assert np.array_equal(np.frombuffer(desc.data, np.float32), result.descriptor)
    levels = unpack_levels(msg, CAMERA)
    for lv, ref in zip(levels, result.levels):
        assert lv.probs.dtype == np.uint8 and lv.probs.shape == ref.probs.shape
        assert np.array_equal(lv.reductions, ref.reductions)   # exact: computed before quantizing
        assert (lv.camera.width, lv.camera.height) == ref.probs.shape[:0:-1]
        p = lv.probs.astype(np.float32) / 255
        if encoding == ClassMapLevel.ENCODING_DENSE_U8:
            assert np.abs(p - ref.probs).max() <= 0.5 / 255 + 1e-6
        else:  # the n best classes per pixel survive, the rest are 0
            kept = np.sort(ref.probs, axis=0)[-top_n:]
            assert np.abs(np.sort(p, axis=0)[-top_n:] - kept).max() <= 0.5 / 255 + 1e-6
            assert np.all((p > 0).sum(0) <= top_n)
            # the argmax survives up to quantization ties
            best = np.take_along_axis(ref.probs, p.argmax(0)[None], axis=0)[0]
            assert np.all(best >= ref.probs.max(0) - 1.0 / 255)


def test_level_cameras_of_a_portrait_image_follow_the_network_crop():
    """The refiner node gets the same level cameras as the library for an image of another aspect
    than the network input (the centred crop), and the plain scaling for one of the same aspect."""
    portrait = Camera("PINHOLE", 48, 64, [60.0, 60.0, 24.0, 32.0])
    msg, _ = pack_segmentation(Header(frame_id="cam"), CameraInfo(), _result(), "dense_u8", 0)
    levels = unpack_levels(msg, portrait)
    def same(a, b) -> bool:
        return (a.model, a.width, a.height) == (b.model, b.width, b.height) and np.allclose(a.params, b.params)

    for lv, (w, h) in zip(levels, ((8, 6), (16, 12), (32, 24), (64, 48))):
        assert same(lv.camera, portrait.network_view((64, 48), (w, h)))
        assert lv.camera.focal[0] == pytest.approx(lv.camera.focal[1])  # not squashed
    assert same(unpack_levels(msg, CAMERA)[3].camera, CAMERA.scaled_to(64, 48))


def test_unpack_refuses_mismatch():
    msg, _ = pack_segmentation(Header(), CameraInfo(), _result(), "dense_u8", 0)
    msg.levels[1].reduction_names = ["sum_sq"]
    with pytest.raises(InputError, match="version mismatch"):
        unpack_levels(msg, CAMERA)
    msg, _ = pack_segmentation(Header(), CameraInfo(), _result(), "dense_u8", 0)
    msg.levels[2].num_classes = 6  # says 6 classes (a divisor of 12), carries 12
    with pytest.raises(InputError, match="expected"):
        unpack_levels(msg, CAMERA)
    msg.levels[2].num_classes = 0  # no count of its own: the segmentation's K, which is wrong too
    msg.num_classes = 24
    with pytest.raises(InputError, match="expected"):
        unpack_levels(msg, CAMERA)
    assert REDUCTION_NAMES  # the names travel with every level


def test_covariance_changes_frame_like_a_sampled_perturbation():
    """Propagate body-frame twist samples of frame a to b = a * T_a_b, compare with the adjoint."""
    rng = np.random.default_rng(2)
    T_a_b = Pose.from_rotvec([0.3, -1.2, 0.4], [0.5, -0.2, 1.4])
    T_world_a = Pose.from_rotvec([0.1, 0.2, 2.0], [10.0, 5.0, 0.0])
    L = np.diag([0.1, 0.05, 0.02, 0.01, 0.02, 0.005])
    cov_a = L @ L.T
    xs = rng.multivariate_normal(np.zeros(6), cov_a, 20000) * 1e-2
    T_world_b = T_world_a @ T_a_b
    xi_b = np.stack([(T_world_b.inv() @ T_world_a @ Pose.exp(x) @ T_a_b).log() for x in xs[:4000]])
    predicted = change_body_covariance(cov_a * 1e-4, T_a_b)
    np.testing.assert_allclose(np.cov(xi_b.T), predicted, atol=0.05 * np.abs(predicted).max())
    # parent frame: the position covariance is the body one rotated into the parent
    parent = body_to_parent_covariance(T_world_b, cov_a)
    R = T_world_b.R
    np.testing.assert_allclose(parent[:3, :3], R @ cov_a[:3, :3] @ R.T, atol=1e-12)
