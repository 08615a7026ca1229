"""The SegLoc network: shapes, reductions parity with the refiner's reference, GPO, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segloc_core.errors import InputError
from segloc_core.net.model import (
    GPO,
    InferenceGraph,
    ModelConfig,
    SegLocNet,
    count_parameters,
    load_state_dict,
    reduce_over_classes,
    reduction_names,
)
from segloc_core.reductions import REDUCTION_NAMES, level_reductions

SMALL = ModelConfig(num_classes=12, width=0.5, feature_dim=8, input_width=64, input_height=48)


@pytest.fixture(scope="module")
def net() -> SegLocNet:
    torch.manual_seed(0)
    return SegLocNet(SMALL).eval()


def test_levels_coarse_to_fine_with_k_way_heads(net):
    out = net(torch.rand(2, 3, 48, 64) * 255)
    assert [tuple(lv.logits.shape) for lv in out.levels] == [(2, 12, 48 // s, 64 // s) for s in (16, 8, 4, 2)]
    assert [tuple(lv.features.shape[1:2]) for lv in out.levels] == [(8,)] * 4
    norms = out.levels[2].features.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # L2-normalised features
    assert out.descriptor.shape == (2, SMALL.descriptor_dim) == (2, 9 * 12)


def test_features_only_forward_matches_heads_at_pixels(net):
    x = torch.rand(1, 3, 48, 64) * 255
    dense, sparse = net(x), net(x, dense_logits=False)
    assert sparse.levels[0].logits is None and sparse.levels[3].logits is not None
    f = sparse.levels[1].features[0, :, 3, 5]
    assert torch.allclose(net.head_logits(1, f), dense.levels[1].logits[0, :, 3, 5], atol=1e-5)


def test_inference_graph_reductions_match_refiner_reference(net):
    assert reduction_names() == REDUCTION_NAMES
    outs = InferenceGraph(net, REDUCTION_NAMES)(torch.rand(1, 3, 48, 64) * 255)
    assert len(outs) == len(InferenceGraph.output_names()) == 9
    for lv in range(4):
        probs = outs[lv][0].detach().numpy()
        assert np.allclose(probs.sum(0), 1, atol=1e-5)
        ref = level_reductions(probs)
        assert np.allclose(outs[4 + lv][0].detach().numpy(), ref, atol=1e-6, rtol=1e-5)


def test_inference_graph_equals_the_training_network(net):
    """The channels-last inference graph gives the training forward's finest softmax, its area-
    pooled levels and its descriptor."""
    x = torch.rand(2, 3, 48, 64) * 255
    with torch.no_grad():
        outs = InferenceGraph(net, REDUCTION_NAMES)(x)
        ref = net(x)
    finest = torch.softmax(ref.levels[-1].logits, dim=1)
    assert torch.allclose(outs[3], finest, atol=1e-6)
    for lv, stride in enumerate(net.config.strides):
        pooled = torch.nn.functional.avg_pool2d(finest, stride // net.config.strides[-1])
        assert torch.allclose(outs[lv], pooled, atol=1e-6)
    assert torch.allclose(outs[8], ref.descriptor, atol=1e-6)


def test_reductions_on_peaked_maps():
    p = torch.softmax(torch.randn(1, 30, 9, 11) * 8, dim=1)
    ours = reduce_over_classes(p.permute(0, 2, 3, 1), REDUCTION_NAMES)[0].numpy()
    assert np.allclose(ours, level_reductions(p[0].numpy()), atol=1e-6)
    with pytest.raises(InputError, match="reductions"):
        reduce_over_classes(p, ("sum_sq", "bogus"))


def test_gpo_weights_sum_to_one_and_start_as_mean_pooling():
    gpo = GPO(grid=3, knots=8, pool=1)
    for n in (5, 37, 300):
        w = gpo.rank_weights(n)
        assert w.shape == (n,) and abs(float(w.detach().sum()) - 1) < 1e-5
    x = torch.rand(1, 4, 8, 12)
    v = gpo(x)
    assert v.shape == (1, 9 * 4)
    assert torch.allclose(v[0, :4], x[0, :, :4, :6].mean(dim=(1, 2)), atol=1e-5)  # window (0,0)
    with torch.no_grad():
        gpo.knots[0, 0, 0] = 30.0  # all weight on the top rank: max pooling
    assert torch.allclose(gpo(x)[0, -4:], x[0, :, 4:, 6:].amax(dim=(1, 2)), atol=1e-3)  # window (2,2)


def test_config_is_validated_and_round_trips():
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(InputError, match="multiple of 16"):
        ModelConfig(input_width=100)
    with pytest.raises(InputError, match="strides"):
        ModelConfig(strides=(32, 16, 8, 4))
    with pytest.raises(InputError, match="unknown"):
        ModelConfig.from_dict({"classes": 5})
    zoomed = ModelConfig.from_dict({**SMALL.to_dict(), "test_scales": [0.8, 1.25]})
    assert zoomed.test_scales == (0.8, 1.25) and ModelConfig.from_dict(zoomed.to_dict()) == zoomed
    for bad in ([1.0], [0.9, 0.9], [0.3], [2.5]):
        with pytest.raises(InputError, match="test_scales"):
            ModelConfig.from_dict({**SMALL.to_dict(), "test_scales": bad})


def test_test_scales_average_the_zoomed_view_back_on_the_image(net):
    """Zoom 2: the view is the image's central half upsampled 2x; the graph's finest map is the
    image's own probabilities averaged, over that central half, with the view's probabilities
    pooled 2x2 back onto it (and the image's own alone elsewhere). Checked against the plain graph
    run on a view made by `interpolate` (the image is flat around the crop border, where
    `interpolate` clamps and `grid_sample` reads the neighbours)."""
    import dataclasses

    torch.manual_seed(1)
    img = torch.rand(1, 3, 48, 64) * 255
    flat = torch.zeros(48, 64, dtype=torch.bool)
    flat[10:14, :] = flat[34:38, :] = True
    flat[:, 14:18] = flat[:, 46:50] = True
    img[:, :, flat] = 100.0
    zoomed = SegLocNet(dataclasses.replace(SMALL, test_scales=(2.0,))).eval()
    zoomed.load_state_dict(net.state_dict())
    view = torch.nn.functional.interpolate(img[:, :, 12:36, 16:48], scale_factor=2, mode="bilinear",
                                           align_corners=False)
    with torch.no_grad():
        plain = InferenceGraph(net, REDUCTION_NAMES)
        own, of_view = plain(img)[3], plain(view)[3]
        got = InferenceGraph(zoomed, REDUCTION_NAMES)(img)
    want = own.clone()
    want[:, :, 6:18, 8:24] = (own[:, :, 6:18, 8:24] + torch.nn.functional.avg_pool2d(of_view, 2)) / 2
    assert torch.allclose(got[3], want, atol=1e-5)
    assert not torch.allclose(got[3], own, atol=1e-3)  # the view changed something
    assert torch.allclose(got[0], torch.nn.functional.avg_pool2d(got[3], 8), atol=1e-6)  # levels from the average


def test_default_model_is_small(net):
    n = count_parameters(SegLocNet(ModelConfig()))
    assert 1e5 < n < 2.5e6  # <= 10 MB in float32 with room to spare


def test_weights_of_another_config_are_refused(net, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    other = SegLocNet(ModelConfig(num_classes=13, width=0.5, feature_dim=8, input_width=64, input_height=48))
    with pytest.raises(InputError, match="do not match"):
        load_state_dict(other, path)
    same = SegLocNet(SMALL)
    load_state_dict(same, path)
    assert torch.equal(same.heads[2].weight, net.heads[2].weight)
