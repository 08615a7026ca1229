"""Contact sheet: the same places of the loop seen under every condition, one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segloc_core.errors import require


def write_contact_sheet(ds, out_path: Path, n_places: int = 4) -> Path:
    """Rows: places (evenly spaced along the mapping traversal); columns: conditions."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = ds.frames(ds.mapping_condition)
    places = np.linspace(0, len(ref) - 1, n_places + 2)[1:-1].round().astype(int) if len(ref) > 2 else [0]
    conds = ds.conditions
    w, h = ds.config.width, ds.config.height
    fig, axes = plt.subplots(len(places), len(conds), squeeze=False,
                             figsize=(2.6 * len(conds), 2.6 * len(places) * h / w + 0.4))
    for r, i in enumerate(places):
        for c, cond in enumerate(conds):
            frames = ds.frames(cond)
            rec = frames[nearest_frame(frames, ref[i].T_world_cam)]
            ax = axes[r][c]
            ax.imshow(ds.rgb(rec))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cond + (" (mapping)" if cond == ds.mapping_condition else ""), fontsize=9)
    fig.tight_layout(pad=0.3)
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def nearest_frame(frames: list, T_world_cam) -> int:
    """Index of the frame (anything with `T_world_cam`) whose camera centre is nearest to T_world_cam's, among those facing
    the same way (within 60 degrees): the same place in another traversal."""
    c = np.array([f.T_world_cam.t for f in frames])
    fwd = np.array([f.T_world_cam.R[:, 2] for f in frames])
    d = np.linalg.norm(c - T_world_cam.t, axis=1) + 1e6 * (fwd @ T_world_cam.R[:, 2] < 0.5)
    return int(np.argmin(d))
