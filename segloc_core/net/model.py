"""The SegLoc segmentation network: a small encoder-decoder with four K-way heads and a GPO descriptor.

Why this architecture (paper 000 uses a hybrid DPT, far too heavy for a Jetson):
- Encoder: MobileNetV2-style inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project).
  Depthwise-separable convolutions are the cheapest accurate building block on embedded GPUs and in
  TensorRT (which fuses conv+BN+ReLU6); no attention, no exotic ops, so the ONNX graph builds into
  an FP16 engine as is. Strides 2..32, the stride-32 stage adds a global-context term (image mean)
  for the wide receptive field clustering needs; everything is written in plain torch (no
  torchvision, no pretrained download): training starts from scratch.
- Decoder: FPN-like, one level per stride 16, 8, 4, 2 (coarse to fine), each the previous level
  upsampled plus a lateral projection of the encoder skip, then one depthwise-separable block.
  Strides 16..2 divide the default world resolution (320x240) exactly, so every level's camera is
  an exact scaling of the input camera. Per level: L2-normalised features F_l (D channels, the space
  the consistency losses act on) and a 1x1 classification head h_l whose weight rows are the
  prototypes c_k (initialised by k-means), giving P_l = softmax(logits).
- `width` scales every channel count (1.0 is the shipped default); `feature_dim` is D.
- Inference (`InferenceGraph`) publishes the finest head's probabilities at all four resolutions
  (area-pooled), since a map point carries a single label; the coarser heads are trained (deep
  supervision, the paper's per-level losses) but not exported.
- The inference graph also emits, per level, the reductions over K the refiner needs
  (`segloc_core.reductions.REDUCTION_NAMES`, re-exported by `segloc_core.localize.refine`), so that O(K*H*W) pass runs with the network.
- Global descriptor: Generalized Pooling Operator (paper 000 Eq. 6) per channel of the finest heat
  map inside M overlapping sub-windows (a grid of half-size windows at quarter strides), concatenated
  to M*K dims. GPO's rank weights theta_o are a learned curve over the normalised rank o/n (softmax
  of knots interpolated linearly), so the same weights serve every window size and input size.
  The finest map is average-pooled 4x4 first (to stride 8): sorting is the descriptor's main cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segloc_core.errors import InputError
from segloc_core.place_labels import PlaceCells

# ImageNet-like normalisation constants; the network sees (rgb/255 - mean) / std.
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters that fix the network's shape (saved beside the weights, checked on load)."""

    num_classes: int = 100  # K
    width: float = 1.0  # multiplier of every encoder/decoder channel count
    feature_dim: int = 32  # D, per-level feature dimension the consistency losses act on
    input_width: int = 320  # pixels; the default world's resolution
    input_height: int = 240
    strides: tuple[int, ...] = (16, 8, 4, 2)  # decoder levels, coarse to fine
    gpo_grid: int = 3  # M = gpo_grid**2 windows of half the image size at quarter-image strides
    gpo_knots: int = 8  # resolution of the learned rank-weight curve
    gpo_pool: int = 4  # average-pool factor applied to the finest map before sorting
    # "fixed": (rgb/255 - ImageNet mean) / std; "image": each image's channels standardised by their
    # own mean and deviation, so exposure, night darkness and colour casts do not reach the encoder
    input_norm: str = "fixed"
    # "": the labels are learned clusters (self-supervised modes); else the place cells
    # (`segloc_core.place_labels.PlaceCells`, "CELL_M,K,PARENT_CELL_M,PARENTS") whose labels the
    # network was trained to predict: map points then take their label from their position
    place_cells: str = ""
    # inference only (training ignores it): the finest probabilities are averaged with those of the
    # same image zoomed about its centre by each of these factors (within the training augmentation's
    # scale range), each mapped back to the image's own pixels. Why (our reading): one pass lets a
    # confident region grow over its smaller neighbours, which pulls the refiner's optimum backwards,
    # and the views disagree on where those borders fall. It multiplies the network's cost by
    # 1 + len(test_scales) (measured: "Zoom averaging" in segloc_core/assets/README.md)
    test_scales: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.feature_dim < 2 or self.width <= 0:
            raise InputError(f"bad model config: K={self.num_classes}, D={self.feature_dim}, width={self.width}")
        if self.input_norm not in ("fixed", "image"):
            raise InputError(f"model input_norm must be 'fixed' or 'image', got {self.input_norm!r}")
        if self.place_cells and PlaceCells.parse(self.place_cells).K != self.num_classes:
            raise InputError(f"model place_cells {self.place_cells!r} has another K than num_classes={self.num_classes}")
        if tuple(self.strides) != (16, 8, 4, 2):
            raise InputError(f"model strides must be (16, 8, 4, 2), got {self.strides}")
        for name, v in (("input_width", self.input_width), ("input_height", self.input_height)):
            if v % 16:
                raise InputError(f"model {name}={v} must be a multiple of 16 (the coarsest stride)")
        object.__setattr__(self, "strides", tuple(self.strides))
        scales = tuple(float(v) for v in self.test_scales)
        if any(not 0.5 <= v <= 2.0 or v == 1.0 for v in scales) or len(set(scales)) != len(scales):
            raise InputError(f"model test_scales must be distinct zooms in [0.5, 2] other than 1, got {list(scales)}")
        object.__setattr__(self, "test_scales", scales)

    @property
    def descriptor_dim(self) -> int:
        return self.gpo_grid ** 2 * self.num_classes

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if k in ("strides", "test_scales") else v for k, v in d.items()})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        d["test_scales"] = list(self.test_scales)
        return d


class LevelOutput(NamedTuple):
    """One decoder level: L2-normalised features (B,D,h,w) and head logits (B,K,h,w), or None when
    the forward pass was asked for features only (training applies the heads at sampled pixels)."""

    features: torch.Tensor
    logits: torch.Tensor | None


class NetworkOutput(NamedTuple):
    levels: list[LevelOutput]  # coarse to fine
    descriptor: torch.Tensor  # (B, M*K) raw GPO descriptor


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3 (maybe strided), linear project 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            ConvBNAct(cin, hidden, 1),
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
            ConvBNAct(hidden, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class SepBlock(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1: the decoder's cheap spatial mixing."""

    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNAct(cin, cin, 3, groups=cin), ConvBNAct(cin, cout, 1))


def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[InvertedResidual(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])


def gpo_windows(h: int, w: int, grid: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, height, width) of GPO's grid x grid half-size windows at quarter strides."""
    wh, ww = h // 2, w // 2
    return [((h - wh) * i // max(grid - 1, 1), (w - ww) * j // max(grid - 1, 1), wh, ww)
            for i in range(grid) for j in range(grid)]


class GPO(nn.Module):
    """Generalized Pooling Operator over sorted values, in M overlapping windows, per channel.

    v = sum_o theta_o psi_o with psi the window's values sorted descending and theta >= 0, sum 1,
    shared across channels. theta is a softmax over n ranks of a curve linearly interpolated from
    `knots` learned logits, so it is defined for any window size. Initialised flat (mean pooling).
    """

    def __init__(self, grid: int, knots: int, pool: int):
        super().__init__()
        self.grid, self.pool = grid, pool
        self.knots = nn.Parameter(torch.zeros(1, 1, knots))

    def rank_weights(self, n: int | torch.Tensor) -> torch.Tensor:
        curve = F.interpolate(self.knots, size=n, mode="linear", align_corners=True)
        return torch.softmax(curve.reshape(-1), dim=0)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """(B,K,H,W) probabilities -> (B, M*K) descriptor."""
        return self.pooled(F.avg_pool2d(probs, self.pool) if self.pool > 1 else probs)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """GPO of maps already average-pooled by `pool` (the inference graph has them as a level).
        All M windows are sorted in one op: a single TopK in ONNX instead of M."""
        b, k, h, w = x.shape
        windows = [x[:, :, y0:y0 + wh, x0:x0 + ww].reshape(b, k, -1)
                   for y0, x0, wh, ww in gpo_windows(h, w, self.grid)]
        vals = torch.sort(torch.stack(windows, dim=1), dim=3, descending=True).values  # (B,M,K,n)
        return (vals @ self.rank_weights(vals.shape[3])).reshape(b, -1)


def reduce_over_classes(probs: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """Torch twin of `segloc_core.reductions.level_reductions` on a channels-last batch:
    (B,h,w,K) -> (B,C,h,w). Same definitions: inner products over K of a pixel's probability
    vector with itself or with a neighbour (0 where the neighbour is outside the map), and the max
    over K. Channels-last because ONNX Runtime reduces over the innermost axis several times
    faster than over the channel axis of NCHW on CPU."""
    p = probs

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=-1)

    known = {
        "sum_sq": lambda: dot(p, p),
        "max_prob": lambda: p.amax(dim=-1),
        "dot_right": lambda: F.pad(dot(p[:, :, :-1], p[:, :, 1:]), (0, 1)),
        "dot_down": lambda: F.pad(dot(p[:, :-1], p[:, 1:]), (0, 0, 0, 1)),
        "dot_down_right": lambda: F.pad(dot(p[:, :-1, :-1], p[:, 1:, 1:]), (0, 1, 0, 1)),
        "dot_down_left": lambda: F.pad(dot(p[:, :-1, 1:], p[:, 1:, :-1]), (1, 0, 0, 1)),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"the network does not know how to compute reductions {unknown}; "
                         "add them to segloc_core.net.model.reduce_over_classes")
    return torch.stack([known[n]() for n in names], dim=1)


def reduction_names() -> tuple[str, ...]:
    """The refiner's reduction channels, in its order (the contract between network and refiner)."""
    from segloc_core.reductions import REDUCTION_NAMES

    return tuple(REDUCTION_NAMES)


class SegLocNet(nn.Module):
    """Encoder-decoder; `forward` for training, `InferenceGraph` wraps it for export/inference."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        w, d, k = config.width, config.feature_dim, config.num_classes
        c = [_ch(v, w) for v in (16, 24, 32, 64, 96)]
        self.register_buffer("rgb_mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("rgb_std", torch.tensor(RGB_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.stem = ConvBNAct(3, c[0], 3, 2)  # stride 2
        self.enc4 = _stage(c[0], c[1], 2, 2)
        self.enc8 = _stage(c[1], c[2], 2, 2)
        self.enc16 = _stage(c[2], c[3], 3, 2)
        self.enc32 = _stage(c[3], c[4], 2, 2)
        self.context = nn.Conv2d(c[4], c[4], 1)
        dec = [_ch(v, w) for v in (64, 48, 32, 24)]  # narrower as resolution grows: cost ~ flat
        self.reduce = nn.ModuleList([nn.Conv2d(cin, cout, 1) for cin, cout in zip([c[4], *dec[:-1]], dec)])
        self.laterals = nn.ModuleList([nn.Conv2d(ci, co, 1) for ci, co in zip((c[3], c[2], c[1], c[0]), dec)])
        self.blocks = nn.ModuleList([SepBlock(co, co) for co in dec])
        self.embed = nn.ModuleList([nn.Conv2d(co, d, 1) for co in dec])
        self.heads = nn.ModuleList([nn.Conv2d(d, k, 1) for _ in range(4)])
        self.gpo = GPO(config.gpo_grid, config.gpo_knots, config.gpo_pool)

    def head_logits(self, level: int, features: torch.Tensor) -> torch.Tensor:
        """Apply level's 1x1 head to features (..., D) -> logits (..., K) (pixels sampled in training)."""
        head = self.heads[level]
        return F.linear(features, head.weight.flatten(1), head.bias)

    def decode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B,3,H,W) float RGB in 0..255, H and W multiples of 16 -> decoder features per
        level (coarse to fine), before the embedding."""
        if self.config.input_norm == "image":
            mean = images.mean(dim=(2, 3), keepdim=True)
            x = (images - mean) / (images.std(dim=(2, 3), keepdim=True) + 2.0)
        else:
            x = (images - self.rgb_mean) / self.rgb_std
        s2 = self.stem(x)
        s4 = self.enc4(s2)
        s8 = self.enc8(s4)
        s16 = self.enc16(s8)
        s32 = self.enc32(s16)
        s32 = s32 + self.context(s32.mean(dim=(2, 3), keepdim=True))
        y = s32
        out = []
        for red, lat, block, skip in zip(self.reduce, self.laterals, self.blocks, (s16, s8, s4, s2)):
            y = F.interpolate(red(y), size=skip.shape[-2:], mode="bilinear", align_corners=False) + lat(skip)
            y = block(y)
            out.append(y)
        return out

    def forward(self, images: torch.Tensor, dense_logits: bool = True) -> NetworkOutput:
        """images: (B,3,H,W) float RGB in 0..255, H and W multiples of 16.

        dense_logits=False skips the full-resolution heads except the finest (the descriptor needs
        it): training evaluates heads only at sampled pixels, which saves most of the K-wide work."""
        levels = []
        for lv, (y, embed, head) in enumerate(zip(self.decode(images), self.embed, self.heads)):
            feats = F.normalize(embed(y), dim=1)
            levels.append(LevelOutput(feats, head(feats) if dense_logits or lv == 3 else None))
        desc = self.gpo(torch.softmax(levels[-1].logits, dim=1))
        return NetworkOutput(levels, desc)


class InferenceGraph(nn.Module):
    """What ONNX/TensorRT run: uint8-range RGB in, per level probabilities + reductions, descriptor.

    Outputs, in order: probs_0..3 (B,K,h,w), reductions_0..3 (B,C,h,w), descriptor (B,M*K).

    All four output levels share the finest head's cluster set: the coarser ones are its
    probabilities area-pooled to their resolution. A map point carries one label (voted on the
    finest level), and the refiner reads channel y_m at every level, so every level must speak
    the same labels. (The paper learns a distinct cluster set per level, which would need one
    label per level and point in the map; the coarser heads here serve training as deep
    supervision only.)
    """

    def __init__(self, net: SegLocNet, reductions: tuple[str, ...]):
        super().__init__()
        self.net, self.reductions = net, reductions

    @staticmethod
    def output_names() -> list[str]:
        return [f"probs_{i}" for i in range(4)] + [f"reductions_{i}" for i in range(4)] + ["descriptor"]

    def finest_probs(self, images: torch.Tensor) -> torch.Tensor:
        """(B,h,w,K) finest probabilities, averaged over the config's `test_scales` views.

        Channels-last from the finest head on: the K-wide softmax, pooling and reductions are
        most of the graph's cost, and ONNX Runtime does them 2x faster over the innermost axis
        (measured: 50 -> 25 ms per 320x240 frame on 2 CPU threads); same values as channels-first."""
        net, scales = self.net, self.net.config.test_scales
        b = images.shape[0]
        if scales:  # view s samples the image at x / s (normalised coordinates about the centre)
            grid = _centred_grid(images.shape[2], images.shape[3], images)
            images = torch.cat([images] + [F.grid_sample(images, (grid / s).expand(b, -1, -1, -1), mode="bilinear",
                                                         padding_mode="zeros", align_corners=False) for s in scales])
        feats = F.normalize(net.embed[-1](net.decode(images)[-1]), dim=1).permute(0, 2, 3, 1)
        head = net.heads[-1]
        probs = torch.softmax(feats @ head.weight.flatten(1).t() + head.bias, dim=-1)  # (V*B,h,w,K)
        if not scales:
            return probs
        grid = _centred_grid(probs.shape[1], probs.shape[2], probs)
        total, weight = probs[:b], torch.ones_like(grid[..., :1])
        for v, s in enumerate(scales, start=1):  # image pixel x reads view v at x * s, where that lies inside it
            back = F.grid_sample(probs[v * b:(v + 1) * b].permute(0, 3, 1, 2), (grid * s).expand(b, -1, -1, -1),
                                 mode="bilinear", padding_mode="border", align_corners=False).permute(0, 2, 3, 1)
            inside = ((grid * s).abs() <= 1.0).all(dim=-1, keepdim=True).to(probs.dtype)
            total, weight = total + back * inside, weight + inside
        return total / weight

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net, strides = self.net, self.net.config.strides
        probs = self.finest_probs(images)  # (B,h,w,K)
        levels = [probs]
        for lv in range(len(strides) - 2, -1, -1):  # area-pool each level from the next finer one
            b, h, w, k = levels[0].shape
            r = strides[lv] // strides[lv + 1]
            levels.insert(0, levels[0].reshape(b, h // r, r, w // r, r, k).mean(dim=(2, 4)))
        reds = [reduce_over_classes(p, self.reductions) for p in levels]
        pooled_stride = strides[-1] * net.gpo.pool
        gpo_in = levels[strides.index(pooled_stride)] if pooled_stride in strides else \
            F.avg_pool2d(probs.permute(0, 3, 1, 2), net.gpo.pool).permute(0, 2, 3, 1)
        descriptor = net.gpo.pooled(gpo_in.permute(0, 3, 1, 2))
        return (*[p.permute(0, 3, 1, 2) for p in levels], *reds, descriptor)


def _centred_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(1,h,w,2) normalised (x, y) of the pixel centres of an h x w map (grid_sample, align_corners=False)."""
    ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) * (2.0 / w) - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def load_state_dict(net: SegLocNet, path, strict: bool = True) -> None:
    """Load a plain state dict (never unpickles objects) and say clearly when it does not fit."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint
    try:
        net.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise InputError(f"weights {path} do not match the model config {net.config}: "
                         f"{str(exc).splitlines()[0]} (K, width or feature_dim differ)") from exc


__all__ = ["ModelConfig", "SegLocNet", "InferenceGraph", "LevelOutput", "NetworkOutput", "GPO", "gpo_windows",
           "reduce_over_classes", "reduction_names", "count_parameters", "load_state_dict"]
