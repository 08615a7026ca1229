"""Test-wide environment: DDS on loopback, a ROS domain of this test process's own, and the
project's Fast DDS profile, set before anything imports rclpy."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Distinct per test process, so concurrent runs (CI next to a developer's run) do not cross-talk.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds.xml"))


def _build(root: Path, config, build_config) -> dict:
    from segloc_core.maps.cli import MapSource, build_map
    from segloc_core.paths import default_model_path
    from segloc_core.world import load_world, render_world, write_world_bag

    world = render_world(config, root / "world", progress=False)
    map_path = root / "map.segmap"
    build_map(MapSource("world", world), map_path, default_model_path(), build_config, progress=False)
    ds = load_world(world)
    return {"root": root, "map": map_path, "ds": ds,
            "bag": write_world_bag(ds, "overcast", root / "bag")}


@pytest.fixture(scope="session")
def graph_assets(tmp_path_factory):
    """The default world's layout at 320x240: 50 frames at 5 Hz of summer (map, built with the
    shipped model) and overcast (a bag), for tests that run the node graph."""
    from segloc_core.maps.build import BuildConfig
    from segloc_core.world import WorldConfig

    config = WorldConfig(frame_rate_hz=5.0, max_frames=50, conditions=("summer", "overcast"),
                         mapping_condition="summer")
    return _build(tmp_path_factory.mktemp("graph"), config, BuildConfig())


@pytest.fixture(scope="session")
def long_bag_assets(tmp_path_factory):
    """1000 frames at 25 Hz, 160x120 (a whole loop): the long-replay memory check."""
    from segloc_core.maps.build import BuildConfig
    from segloc_core.world import WorldConfig

    config = WorldConfig(width=160, height=120, frame_rate_hz=25.0, max_frames=1000,
                         conditions=("summer", "overcast"), mapping_condition="summer")
    return _build(tmp_path_factory.mktemp("long"), config, BuildConfig(frame_stride=10))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny rendered world (12 frames at 160x120, three conditions), shared read-only."""
    from segloc_core.world import render_tiny_world

    try:
        return render_tiny_world(tmp_path_factory.mktemp("tiny_world"))
    except Exception as exc:  # headless GL missing on this machine
        pytest.skip(f"cannot render the tiny world here: {exc}")


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A real (randomly initialised, untrained) segmentation model, K=16 at 160x112: a model other
    than the shipped one, for tests of map building and of mismatched models."""
    torch = pytest.importorskip("torch")
    import yaml

    from segloc_core.net.model import ModelConfig, SegLocNet

    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=16, width=0.25, input_width=160, input_height=112)
    path = tmp_path_factory.mktemp("model") / "untrained.pt"
    torch.save(SegLocNet(cfg).state_dict(), path)
    path.with_suffix(".yaml").write_text(yaml.safe_dump({"model": cfg.to_dict()}))
    return path
