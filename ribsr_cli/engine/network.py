"""The SST network: RIB window-attention blocks between a conv stem and an upsampler.

    feat = proj(x) + body(proj(x));   out = upsampler(feat, x)

A damage-conditioned network (`config.damage_channels`, `engine.damage`) adds a convolution of the damage
maps to proj(x): feat0 = proj(x) + damage_proj(maps). (One conv over [x, maps] is the same function, but a
separate term keeps `proj` in the authors' layout and makes "damage_proj = 0" exactly the clean network, bit
for bit, since adding 0.0 changes nothing.) It carries the `DamageEstimator` that reads the damage from x.

body = n_blocks x Block, channel LayerNorm, Conv3x3. A Block is one Layer per
window size, then a Conv3x3, with a residual around the whole block. Module
names mirror the authors' checkpoints so their state dicts load strictly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ribsr_cli.engine.attention import WindowAttention, default_bias_budget, plan_bias_budget
from ribsr_cli.engine.config import SSTConfig
from ribsr_cli.engine.damage import DamageEstimator, damage_maps


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (eps 1e-6, affine)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvFFN(nn.Module):
    """1x1 expand + GELU, a depthwise 3x3 residual branch with GELU, 1x1 back."""

    def __init__(self, dim: int, exp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * exp_ratio)
        self.proj = nn.Conv2d(dim, hidden, 1)
        self.dwc = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.agg = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.gelu(self.proj(x))
        t = t + F.gelu(self.dwc(t))
        return self.agg(t)


class Layer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + ffn(norm(x)).

    With `damage_channels` (a damage-modulated network, `SSTConfig.damage_modulation`), each norm's output is
    scaled and shifted per channel by a linear map of the damage vector, norm(x)·(1 + γ(d)) + β(d) (as
    adaLN-Zero conditions a transformer): every layer can change its behaviour with the damage, where the
    input term alone gives one bias at the stem. The map starts at zero, so the layer starts unmodulated.
    """

    def __init__(self, dim: int, exp_ratio: float, attn: WindowAttention, damage_channels: int = 0) -> None:
        super().__init__()
        self.norm_attn = ChannelLayerNorm(dim)
        self.attn = attn
        self.norm_ffn = ChannelLayerNorm(dim)
        self.ffn = ConvFFN(dim, exp_ratio)
        if damage_channels:
            self.damage_mod = nn.Linear(damage_channels, 4 * dim)
            nn.init.zeros_(self.damage_mod.weight)
            nn.init.zeros_(self.damage_mod.bias)

    def forward(self, x: torch.Tensor, damage: torch.Tensor | None = None) -> torch.Tensor:
        if damage is None or not hasattr(self, "damage_mod"):
            x = x + self.attn(self.norm_attn(x))
            return x + self.ffn(self.norm_ffn(x))
        scale_a, shift_a, scale_f, shift_f = (t[:, :, None, None].to(x.dtype)
                                              for t in self.damage_mod(damage).chunk(4, dim=1))
        x = x + self.attn(self.norm_attn(x) * (1 + scale_a) + shift_a)
        return x + self.ffn(self.norm_ffn(x) * (1 + scale_f) + shift_f)


class Block(nn.Sequential):
    """Layers (one per window size) then Conv3x3, with a residual around all of it; a damage vector reaches
    the layers of a damage-modulated network."""

    def forward(self, x: torch.Tensor, damage: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        h = x
        for module in self:
            h = module(h, damage) if isinstance(module, Layer) else module(h)
        return x + h


class PixelShuffleDirect(nn.Module):
    """Conv3x3 to 3*r^2 channels plus the LR image repeated r^2 times, then pixel-shuffle."""

    def __init__(self, dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.up_conv = nn.Conv2d(dim, 3 * scale * scale, 3, padding=1)

    def forward(self, feat: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        skip = torch.repeat_interleave(lr, self.scale * self.scale, dim=1)
        return F.pixel_shuffle(self.up_conv(feat) + skip, self.scale)


class PixelShuffleUpsampler(nn.Module):
    """Conv3x3 + LeakyReLU(0.1), Conv3x3 to intermediate*r^2, pixel-shuffle, Conv3x3 to RGB, plus nearest LR."""

    def __init__(self, dim: int, scale: int, intermediate_dim: int) -> None:
        super().__init__()
        self.scale = scale
        self.feature_conv = nn.Conv2d(dim, intermediate_dim, 3, padding=1)
        self.up_conv = nn.Conv2d(intermediate_dim, intermediate_dim * scale * scale, 3, padding=1)
        self.final_conv = nn.Conv2d(intermediate_dim, 3, 3, padding=1)

    def forward(self, feat: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        t = F.leaky_relu(self.feature_conv(feat), 0.1)
        t = F.pixel_shuffle(self.up_conv(t), self.scale)
        return self.final_conv(t) + F.interpolate(lr, scale_factor=self.scale, mode="nearest")


class SST(nn.Module):
    """Super-resolution Transformer with rank-factorised implicit neural bias (or RPB / no bias)."""

    def __init__(self, config: SSTConfig | dict) -> None:
        super().__init__()
        cfg = config if isinstance(config, SSTConfig) else SSTConfig.from_network_g(config)
        self.config = cfg
        dim, scale = cfg.dim, cfg.scale
        window_sizes = list(cfg.window_sizes)
        shift_all = len(set(window_sizes)) == 1
        self.scale = scale
        self.window_sizes = window_sizes
        self.proj = nn.Conv2d(3, dim, 3, padding=1)
        if cfg.damage_channels:
            self.damage_proj = nn.Conv2d(cfg.damage_channels, dim, 3, padding=1, bias=False)
            self.estimator = DamageEstimator(cfg.damage_channels)
        #: the damage every forward is told until `condition` changes it (None: each input's own estimate)
        self.damage: torch.Tensor | None = None
        blocks: list[nn.Module] = []
        for _ in range(cfg.n_blocks):
            layers: list[nn.Module] = []
            for j, ws in enumerate(window_sizes):
                attn = WindowAttention(
                    dim,
                    cfg.num_heads[j],
                    ws,
                    cfg.ranks[j],
                    positional=cfg.attn_type,
                    shift=shift_all and j % 2 == 1,
                    rib_hidden_dim=cfg.rib_hidden_dim,
                    rib_n_freqs=cfg.rib_n_freqs,
                    gate=cfg.gate_type is not None,
                )
                layers.append(Layer(dim, cfg.exp_ratio, attn,
                                    cfg.damage_channels if cfg.damage_modulation else 0))
            layers.append(nn.Conv2d(dim, dim, 3, padding=1))
            blocks.append(Block(*layers))
        blocks += [ChannelLayerNorm(dim), nn.Conv2d(dim, dim, 3, padding=1)]
        self.body = nn.Sequential(*blocks)
        if cfg.upsampler_type == "pixelshuffle_direct":
            self.upsampler: nn.Module = PixelShuffleDirect(dim, scale)
        else:
            self.upsampler = PixelShuffleUpsampler(dim, scale, cfg.intermediate_dim)
        plan_bias_budget(self, default_bias_budget())  # the cached-bias budget is per model, not per layer
        #: How feature maps are stored: `runtime.pick_memory_format` decides, the runner sets it
        self.memory_format = torch.contiguous_format

    def use_memory_format(self, memory_format: torch.memory_format) -> "SST":
        """Store weights and feature maps in `memory_format` (channels_last: NHWC, which oneDNN's CPU
        convolutions, the channel LayerNorm and the window partition read without layout copies)."""
        self.to(memory_format=memory_format)
        self.memory_format = memory_format
        return self

    @property
    def arch(self) -> dict:
        """The `network_g` dict of `config`, for checkpoint metadata and model cards (a fresh copy each time)."""
        return self.config.to_network_g()

    def condition(self, damage: torch.Tensor | None) -> None:
        """Tell every following forward this damage vector (DAMAGE_CHANNELS,): `engine.runner.Upscaler` sets
        one estimate per image, so all its tiles are told the same; None returns to per-input estimates."""
        self.damage = damage

    def forward(self, x: torch.Tensor, damage: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 3, H, W) LR; damage: (B, C) or (C,) vectors for a conditioned network (the training batch's
        own; else `self.damage`, else the estimator's reading of x)."""
        x = x.contiguous(memory_format=self.memory_format)
        feat = self.proj(x)
        if not self.config.damage_channels:
            return self.upsampler(feat + self.body(feat), x)
        if damage is None:
            damage = self.damage if self.damage is not None else self.estimator(x).detach().clamp_min(0.0)
        vectors = (damage if damage.dim() == 2 else damage[None].expand(x.shape[0], -1)).to(x.device, torch.float32)
        feat = feat + self.damage_proj(damage_maps(vectors, x).contiguous(memory_format=self.memory_format))
        h = feat
        for module in self.body:
            h = module(h, vectors) if isinstance(module, Block) else module(h)
        return self.upsampler(feat + h, x)
