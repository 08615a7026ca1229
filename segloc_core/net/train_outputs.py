"""What every training mode does around its loop: the run's start (output folder, threads, seed,
device), the optimiser and its schedule, resuming from a checkpoint, per-epoch logs, and the final
files it leaves.

`metrics.csv` and `training.png` after every epoch (so a run cut short still shows its curves),
and at the end `model.pt` (plain state dict), `model.yaml` (model config + the training config, what
`segloc export` reads) and `metrics.json` (the rows and the mode's own summary).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from segloc_core.errors import InputError
from segloc_core.net.model import SegLocNet, count_parameters
from segloc_core.net.train_config import TrainConfig, TrainResult, pick_device


def start_run(cfg: TrainConfig, out_dir: Path) -> tuple[Path, torch.device]:
    """Create the output folder, fix threads and seed, pick the device (TF32 convolutions on a GPU)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.optim.threads)
    torch.manual_seed(cfg.optim.seed)
    device = pick_device(cfg.optim.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return out_dir, device


log = logging.getLogger(__name__)


def make_optimizer(net: SegLocNet, cfg: TrainConfig):
    """AdamW with a cosine learning-rate decay over all epochs x steps_per_epoch steps."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    total = cfg.optim.epochs * cfg.optim.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1))))
    return opt, sched


def _without_epochs(d: dict) -> dict:
    return {**d, "optim": {k: v for k, v in d["optim"].items() if k != "epochs"}}


def resume_checkpoint(path: Path, cfg: TrainConfig, net: SegLocNet, opt, sched, device: torch.device) -> dict | None:
    """Load `path` (if it exists) into the network, optimiser and schedule and return it (its
    "epoch", "rows" and any mode-specific entries); only optim.epochs may differ from `cfg`."""
    if not path.is_file():
        return None
    ck = torch.load(path, map_location=device, weights_only=True)
    if _without_epochs(ck["config"]) != _without_epochs(cfg.to_dict()):
        raise InputError(f"{path} was written with another config (only optim.epochs may change "
                         "on resume); use a fresh --out or the same config")
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    log.info("resumed from %s at epoch %d", path, ck["epoch"])
    return ck


def write_epoch_logs(rows: list[dict], out_dir: Path, plot: Callable[[list[dict], Path], None]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)
    plot(rows, out_dir / "training.png")


def finish_run(net: SegLocNet, cfg: TrainConfig, out_dir: Path, rows: list[dict], t0: float,
               summary: dict) -> TrainResult:
    """Write the final weights, model.yaml and metrics.json; `t0` is the run's perf_counter start."""
    weights, model_yaml = out_dir / "model.pt", out_dir / "model.yaml"
    torch.save(net.state_dict(), weights)
    model_yaml.write_text(yaml.safe_dump({"model": cfg.model.to_dict(), "training": cfg.to_dict(),
                                          "parameters": count_parameters(net)}, sort_keys=False))
    seconds = time.perf_counter() - t0
    (out_dir / "metrics.json").write_text(json.dumps(
        {"rows": rows, "seconds_this_run": round(seconds, 1), "config": cfg.to_dict(),
         "parameters": count_parameters(net), **summary}, indent=1))
    return TrainResult(weights, model_yaml, out_dir / "metrics.json", out_dir / "training.png", seconds,
                       rows[-1] if rows else {})
