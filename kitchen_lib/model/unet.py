"""The conditional U-Net: net(x_t, t, inputs) -> prediction (inputs: kitchen_lib.base.example).

The current frame (and a world model's N past frames) are stacked with the noisy future frame on
the channel axis: the network sees them all at every pixel from the first layer. Every res block
gets the time embedding (sinusoidal features of t through an MLP), which a world model's vector joins
(kitchen_lib.model.conditioning).

    input  (B, (2+N)C, H, W) --conv--> base channels
    down   per level: res blocks (+ attention at chosen levels), then halve H, W
    middle res block, attention, res block at the lowest resolution
    up     per level: res blocks on [features, skip] (+ attention), then double H, W
    output GroupNorm, SiLU, conv -> (B, C, H, W)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.example import NULL_ACTIONS
from kitchen_lib.model.conditioning import VectorConditioning
from kitchen_lib.model.layers import Conv3x3, Dropout


@dataclass(frozen=True)
class UNetConfig:
    """The architecture. Frame size and channels are not part of it: they come from the data
    (`ConditionalUNet(cfg, image_size, image_channels, ...)`), so they are never set twice."""

    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 1, 2, 3)  # one level each; every level but the last halves H, W
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()  # levels (0: full resolution) with attention; the middle always has it
    time_emb_dim: int = 128
    time_mlp_dim: int = 256
    dropout: float = 0.1
    groups: int = 8  # GroupNorm groups
    heads: int = 4  # attention heads
    zero_init: bool = True  # start every res block, attention and the output at zero (see _zero_init)
    adagn: bool = False  # the embedding scales and shifts each res block's second norm, rather than only shifting
    # Space-to-depth, as in Simple Diffusion and DiT's patches: the top level then runs at 1/p the
    # frame size, for about a quarter of the compute at p = 2.
    patch_size: int = 1  # fold each p x p block of pixels into channels before the first conv, unfold after the last

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"], d["attention_levels"] = list(self.channel_mults), list(self.attention_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Also reads configs saved before size and channels moved to the data config, when
        attention was given in pixels (`attention_resolutions`) rather than levels."""
        d = {"zero_init": False} | d  # saved before the option existed: initialised the default way
        if "attention_resolutions" in d:
            size = d.pop("image_size")
            d.pop("image_channels", None)
            d["attention_levels"] = [round(math.log2(size / r)) for r in d.pop("attention_resolutions")]
        d["channel_mults"], d["attention_levels"] = tuple(d["channel_mults"]), tuple(d["attention_levels"])
        return cls(**d)

    def resolutions(self, image_size: int) -> list[int]:
        """The feature-map sizes of the levels, top to bottom."""
        return [image_size // self.patch_size // 2**i for i in range(len(self.channel_mults))]

    def validate(self, image_size: int | None = None) -> None:
        levels = len(self.channel_mults)
        problems = []
        if levels < 1 or any(m < 1 for m in self.channel_mults):
            problems.append(f"channel_mults must be positive whole numbers (got {self.channel_mults})")
        elif self.patch_size < 1:
            problems.append(f"patch_size must be 1 or more (got {self.patch_size})")
        elif image_size is not None and (image_size < 1 or image_size % (f := self.patch_size * 2 ** (levels - 1))):
            problems.append(f"--size {image_size} (the frame size) is not divisible by {f} (patch_size {self.patch_size} "
                            f"x 2^{levels - 1}), which {levels} levels of down-sampling need: use a size like "
                            f"{f * max(1, round(image_size / f))}, fewer channel_mults or a smaller patch_size")
        bad = [lv for lv in self.attention_levels if not 0 <= lv < levels]
        if bad:
            problems.append(f"attention at levels {bad} never occurs: there are levels 0..{levels - 1}")
        chans = [self.base_channels * m for m in self.channel_mults] + [self.base_channels]
        bad_groups = sorted({c for c in chans if c % self.groups})
        if bad_groups:
            problems.append(f"GroupNorm groups={self.groups} do not divide channel counts {bad_groups}: "
                            f"choose base_channels and channel_mults so every level is a multiple of {self.groups}")
        attended = [chans[-2]] + [chans[lv] for lv in self.attention_levels if 0 <= lv < levels]  # the middle, then levels
        bad_heads = sorted({c for c in attended if c % self.heads})
        if bad_heads:
            problems.append(f"attention heads={self.heads} do not divide channel counts {bad_heads}")
        if self.time_emb_dim % 2:
            problems.append(f"time_emb_dim must be even (got {self.time_emb_dim})")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if problems:
            raise UserError("impossible U-Net configuration:\n  " + "\n  ".join(problems))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) sin/cos features at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    """Two convolutions on a residual branch, told the time step (and any conditioning) by `emb`.

    Plain: emb shifts every channel after the first convolution. AdaGN (adagn=True, as in ADM
    and DIAMOND): emb gives a scale and a shift of the second normalisation, x * (1 + s) + b,
    zero at start so the block begins as if unconditioned."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int, adagn: bool = False) -> None:
        super().__init__()
        self.adagn = adagn
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = Conv3x3(c_in, c_out)
        self.emb = nn.Linear(emb_dim, 2 * c_out if adagn else c_out)
        if adagn:
            nn.init.zeros_(self.emb.weight)
            nn.init.zeros_(self.emb.bias)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.drop = Dropout(dropout)
        self.conv2 = Conv3x3(c_out, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))[:, :, None, None]
        if self.adagn:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.drop(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head self-attention over all pixels of a feature map (fused SDPA kernel)."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # Pixel-major (B, HW, 3, heads, c/heads): free for channels-last maps, one copy otherwise.
        # It hands SDPA q, k, v with a unit-stride last axis, which its fused CPU kernel needs
        # (strided ones fall back to the slower explicit softmax(QK^T)V).
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, heads, HW, c/heads) each
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        if not x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous()  # (B, c, H, W) back in the layout the weights use
        return x + self.proj(out)


class Level(nn.Module):
    """Res blocks at one resolution, each optionally followed by attention."""

    def __init__(self, chans: list[tuple[int, int]], emb_dim: int, cfg: UNetConfig, attend: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(i, o, emb_dim, cfg.dropout, cfg.groups, cfg.adagn) for i, o in chans)
        self.attn = nn.ModuleList(Attention(o, cfg.heads, cfg.groups) if attend else nn.Identity() for _, o in chans)


class ConditionalUNet(VectorConditioning):
    """net(x_t, t, inputs) -> prediction: x_t the noisy future frame, inputs the example's tensors
    (kitchen_lib.base.example): "current" and, for a world model, "context" and "vector".

    Frames are (B, C, H, W), the context (B, N*C, H, W), t (B,), the vector (B, D): the
    conditioning vector (actions, joint state) is normalised with statistics kept as buffers,
    projected and added to the timestep's sinusoidal features before the time MLP.

    `action_slice`: where the actions sit in the vector, for a net trained with action dropout
    (it then learns `null_actions`; kitchen_lib.model.conditioning says how they are used)."""

    def __init__(self, cfg: UNetConfig, image_size: int, image_channels: int, *, context_frames: int,
                 vector_dim: int, action_slice: slice | None = None) -> None:
        super().__init__()
        cfg.validate(image_size)
        self.cfg, self.image_size, self.image_channels = cfg, image_size, image_channels
        self.context_frames = context_frames
        self.out_channels = image_channels
        emb_dim = cfg.time_mlp_dim
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # After the time MLP: the seeded initialisation draws in the order it always has.
        self._init_vector(vector_dim, cfg.time_emb_dim, action_slice)
        folded = image_channels * cfg.patch_size**2  # channels of a frame once its patches are folded in
        self.inp = Conv3x3((2 + context_frames) * folded, cfg.base_channels)

        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [cfg.base_channels], cfg.base_channels
        for i, co in enumerate(chans):
            pairs = []
            for _ in range(cfg.num_res_blocks):
                pairs.append((c, co))
                c = co
                skips.append(c)
            self.down.append(Level(pairs, emb_dim, cfg, i in cfg.attention_levels))
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else Conv3x3(c, c, stride=2))
            if not last:
                skips.append(c)

        self.mid1 = ResBlock(c, c, emb_dim, cfg.dropout, cfg.groups, cfg.adagn)
        self.mid_attn = Attention(c, cfg.heads, cfg.groups)
        self.mid2 = ResBlock(c, c, emb_dim, cfg.dropout, cfg.groups, cfg.adagn)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, co in reversed(list(enumerate(chans))):
            pairs = []
            for _ in range(cfg.num_res_blocks + 1):
                pairs.append((c + skips.pop(), co))
                c = co
            self.up.append(Level(pairs, emb_dim, cfg, i in cfg.attention_levels))
            self.upsample.append(nn.Identity() if i == 0 else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                                             Conv3x3(c, c)))
        self.out = nn.Sequential(nn.GroupNorm(cfg.groups, c), nn.SiLU(), Conv3x3(c, folded))
        if cfg.zero_init:
            self._zero_init()

    def _zero_init(self) -> None:
        """Zero the last layer of every residual branch and the output (as in ADM, Dhariwal &
        Nichol 2021): each block starts as the identity and the network's first output is 0,
        which for a residual x0 model is exactly "copy the current frame"."""
        last = [m.conv2 if isinstance(m, ResBlock) else m.proj for m in self.modules() if isinstance(m, ResBlock | Attention)]
        for layer in [*last, self.out[-1]]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """x_t (B, C, H, W); t (B,) integer steps; inputs as the class says -> (B, C, H, W)."""
        current, context, vector = inputs["current"], inputs.get("context"), inputs.get("vector")
        null = inputs.get(NULL_ACTIONS)
        self._check_inputs(x_t, current, context, vector, null)
        feats = sinusoidal_embedding(t, self.cfg.time_emb_dim)
        if self.vector_dim:
            feats = feats + self.embed_vector(vector, null)
        emb = self.time_mlp(feats)
        x = torch.cat([x_t, current] if context is None else [x_t, context, current], dim=1)
        p = self.cfg.patch_size
        if p > 1:  # torch copies even for p = 1
            x = F.pixel_unshuffle(x, p)  # (B, n*C*p*p, H/p, W/p)
        if self.inp.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # match the weights' layout (see channels_last)
        h = self.inp(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample, strict=True):
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample, strict=True):
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = up(h)
        out = self.out(h)
        return F.pixel_shuffle(out, p) if p > 1 else out  # (B, C*p*p, H/p, W/p) -> (B, C, H, W)

    def _check_inputs(self, x_t, current, context, vector, null=None) -> None:
        want = (self.image_channels, self.image_size, self.image_size)
        if x_t.shape != current.shape or x_t.shape[1:] != want:
            raise ValueError(f"expected noisy and current frames shaped (B, {', '.join(map(str, want))}); "
                             f"got {tuple(x_t.shape)} and {tuple(current.shape)}")
        if self.context_frames and (context is None or context.shape[1] != self.context_frames * self.image_channels):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"this model needs {self.context_frames} context frames, (B, "
                             f"{self.context_frames * self.image_channels}, H, W); got {got}")
        self._check_vector(vector)
        extra = [k for k, v, n in (("context", context, self.context_frames), ("vector", vector, self.vector_dim)) if v is not None and not n]
        if extra:  # else a frame-only net would drop them silently
            raise ValueError(f"this model takes no {' or '.join(extra)}: it was built without them")
        self._check_null(null, x_t.shape[0])


def channels_last(model: nn.Module) -> nn.Module:
    """Store the weights pixel-major (NHWC): convolutions and GroupNorm run faster so on CPU
    (bench/speed.py measures it) and with tensor cores on GPU; the maths is unchanged."""
    return model.to(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

