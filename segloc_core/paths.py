"""Where segloc keeps generated data (rendered worlds, maps, bags) and its shipped assets.

Generated data lives under `$SEGLOC_HOME` (default `~/.cache/segloc`); the Makefile points it at the
repository's `.segloc/` so demo and tests stay inside the checkout. Shipped weights live in the
package (`segloc_core/assets`), so an installed package finds them without a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def home() -> Path:
    """Root of generated data; created on first use."""
    root = Path(os.environ.get("SEGLOC_HOME", Path.home() / ".cache" / "segloc")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def world_dir(name: str = "default") -> Path:
    """Rendered dataset of the named procedural world."""
    return home() / "world" / name


def map_path(name: str = "default") -> Path:
    """Labeled map built from the named world's mapping traversal."""
    return home() / "maps" / f"{name}.segmap"


def default_model_path() -> Path:
    """The shipped default model (trained by `segloc train` on the default world)."""
    return ASSETS_DIR / "segloc_default.onnx"
