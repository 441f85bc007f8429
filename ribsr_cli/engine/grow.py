"""Function-preserving growth of an SST: more blocks, the same output.

Why: the real-photo models need more capacity than the 0.12 M `ribsr-s` they start from, yet `--denoise`
interpolates a real model's weights with its clean partner's, which needs one architecture. A deeper network
whose extra blocks are *identities* computes exactly what the clean network computes, so

    grow_state(clean, from=ribsr-s, to=deeper)  ==  the clean model, bit for bit,

and it is both the starting point of the deeper real model's training and the clean end of its `--denoise`
line. A Block is `x + body(x)` whose body ends in a Conv3x3; with that conv's weight and bias zero the
block adds exactly 0.0 to x (finite inputs), so the output is unchanged in any precision.

New block k (k = n_from .. n_to - 1) copies the trained block (k - n_from) mod n_from (its attention and FFN
start from trained features rather than noise: "progressive stacking"), with its last conv zeroed; the body's
closing LayerNorm and Conv3x3 move to the end. Only the block count may grow: a wider `dim` is not
function-preserving (the channel LayerNorm's statistics would change).

The same holds for damage conditioning (`engine.damage`): a network whose `damage_proj` is zero adds exactly
0.0 to proj(x), and a layer whose `damage_mod` is zero scales its norms by exactly 1 and shifts them by 0, so
it ignores the damage and computes the clean network's output bit for bit. `grow_state` adds those zeros; the `DamageEstimator`'s weights are not part of such growth (it
has no clean counterpart): a conditioned network's own estimator is loaded beside (`estimator_keys`).
"""

from __future__ import annotations

import dataclasses
import re

import torch

from ribsr_cli.engine.config import SSTConfig

_BODY_KEY = re.compile(r"^body\.(\d+)\.(.*)$")


def can_grow(small: SSTConfig, large: SSTConfig) -> bool:
    """True when `large` is `small` with at least as many blocks and damage channels, nothing else changed."""
    return (large.n_blocks >= small.n_blocks and large.damage_channels >= small.damage_channels
            and large.damage_modulation >= small.damage_modulation
            and dataclasses.replace(small, n_blocks=large.n_blocks, damage_channels=large.damage_channels,
                                    damage_modulation=large.damage_modulation) == large)


def estimator_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The damage estimator's tensors of a conditioned network's state dict (what growth cannot make)."""
    return {k: v for k, v in state.items() if k.startswith("estimator.")}


def grow_state(state: dict[str, torch.Tensor], small: SSTConfig,
               large: SSTConfig) -> dict[str, torch.Tensor]:
    """The state dict of `large` that computes what `state` (of `small`) computes; see the module docstring."""
    if not can_grow(small, large):
        raise ValueError(f"cannot grow {small.n_blocks} blocks into this architecture: only n_blocks and "
                         "damage_channels may grow (and not shrink); every other field must match")
    n_from, n_to = small.n_blocks, large.n_blocks
    last_conv = len(small.window_sizes)  # a Block's Sequential index of its closing Conv3x3
    grown: dict[str, torch.Tensor] = {}
    by_block: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _BODY_KEY.match(key)
        if match is None:
            grown[key] = value.clone()
            continue
        index, rest = int(match.group(1)), match.group(2)
        if index < n_from:
            grown[key] = value.clone()
            by_block.setdefault(index, {})[rest] = value
        else:  # the closing LayerNorm (n_from) and Conv3x3 (n_from + 1) move behind the new blocks
            grown[f"body.{index - n_from + n_to}.{rest}"] = value.clone()
    if large.damage_channels and not small.damage_channels:
        grown["damage_proj.weight"] = state["proj.weight"].new_zeros(
            (large.dim, large.damage_channels, *state["proj.weight"].shape[2:]))
    if large.damage_modulation and not small.damage_modulation:  # every layer's modulation starts at zero
        for b in range(n_to):
            for j in range(len(large.window_sizes)):
                grown[f"body.{b}.{j}.damage_mod.weight"] = state["proj.weight"].new_zeros(
                    (4 * large.dim, large.damage_channels))
                grown[f"body.{b}.{j}.damage_mod.bias"] = state["proj.weight"].new_zeros(4 * large.dim)
    for k in range(n_from, n_to):
        for rest, value in by_block[(k - n_from) % n_from].items():
            copy = value.clone()
            if rest.startswith(f"{last_conv}."):
                copy.zero_()
            grown[f"body.{k}.{rest}"] = copy
    return grown


def damage_layout(state: dict[str, torch.Tensor]) -> tuple[int, bool]:
    """(damage_channels, damage_modulation) an SST state dict holds ((0, False) for a plain network)."""
    if "damage_proj.weight" not in state:
        return 0, False
    return state["damage_proj.weight"].shape[1], "body.0.0.damage_mod.weight" in state


def count_blocks(state: dict[str, torch.Tensor]) -> int:
    """How many blocks an SST state dict holds (0 when it is not one)."""
    n = 0
    while f"body.{n}.0.norm_attn.weight" in state:
        n += 1
    return n


def deeper(config: SSTConfig, n_blocks: int) -> SSTConfig:
    """`config` with `n_blocks` blocks (the shape `grow_state` fills)."""
    return dataclasses.replace(config, n_blocks=n_blocks)
