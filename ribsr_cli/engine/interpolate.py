"""`--denoise S`: network interpolation between a scale's clean and real shipped models.

The clean model (trained on bicubic LR) keeps every bit of detail, noise and JPEG blocks included; the real
model (fine-tuned from it on camera-like damage) removes noise and blocking and smooths a little. Because the
real model starts from the clean weights and shares their architecture, the straight line between the two
weight sets stays a working network (the observation behind ESRGAN's and Real-ESRGAN's "network
interpolation"), so one number picks how much damage is removed:

    weights = (1 - S) * clean + S * real,   0 <= S <= 1

computed in float64 and cast back, so S = 0 and S = 1 give the two shipped weight sets bit for bit (1·x + 0·y
is exactly x). A real model may be deeper than its clean partner (ribsr-s6 grown from ribsr-s, `engine.grow`):
the clean end of the line is then the clean weights grown to that depth, whose extra blocks are identities, so
S = 0 still upscales exactly as the clean model does. The same holds for a damage-conditioned real model
(`engine.damage`): the clean end has zero weights on the damage maps, so it ignores them. Both files are sha256-checked before mixing, and the mix
is named `<clean>+real@S` with both hashes (`LoadedModel.sha256` = "<clean sha256>+<real sha256>",
`LoadedModel.components`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ribsr_cli.catalog import ModelEntry, find_model, shipped_models, shipped_scales, variant_model
from ribsr_cli.engine.checkpoint import CheckpointError
from ribsr_cli.engine.grow import can_grow, estimator_keys, grow_state
from ribsr_cli.engine.runner import LoadedModel


def denoise_pair(model: str | None, scale: int) -> tuple[ModelEntry, ModelEntry]:
    """(clean, real) shipped entries for `--denoise` with this `-m` value at this scale.

    No `-m`, `-m clean` or `-m real`: the scale's clean default and its real model. A shipped name: the pair
    that name belongs to (a real model pairs with the clean model it was fine-tuned from, recorded as
    `training.init_from` in the manifest, else the clean model of its scale and architecture). Anything
    else (a file, a stored model, a shipped model without a partner) is a CheckpointError.
    """
    entry = None
    if model is not None and model.lower() not in ("clean", "real"):
        entry = find_model(model)
        if entry is None or entry.source != "shipped":
            raise CheckpointError(model, "--denoise mixes a scale's shipped clean and real models; "
                                         "it cannot be used with this -m (use -m clean, -m real or no -m)")
        if entry.scale != scale:
            raise CheckpointError(model, f"model upscales x{entry.scale}, but x{scale} was asked")
    if entry is None:
        clean, real = variant_model("clean", scale), variant_model("real", scale)
    elif entry.variant == "real":
        clean, real = _base_of(entry), entry
    else:
        clean, real = entry, _partner_of(entry)
    if clean is None or real is None:
        have = shipped_scales("real")
        raise CheckpointError(model or f"x{scale}", f"--denoise needs a shipped clean and real model at x{scale} "
                                                    f"(real models ship for: {', '.join(f'x{s}' for s in have) or 'none'})")
    return clean, real


def _base_of(real: ModelEntry) -> ModelEntry | None:
    """The clean model a real one was fine-tuned from."""
    base = real.provenance.get("init_from")
    if base:
        found = find_model(Path(str(base)).stem)
        if found is not None and found.source == "shipped" and found.variant == "clean":
            return found
    return next((e for e in shipped_models() if e.variant == "clean" and e.scale == real.scale
                 and e.arch_name == real.arch_name), None)


def _partner_of(clean: ModelEntry) -> ModelEntry | None:
    """The real model fine-tuned from this clean one."""
    reals = [e for e in shipped_models() if e.variant == "real" and e.scale == clean.scale]
    return next((e for e in reals if _base_of(e) == clean), None)


def interpolate_state(clean: dict[str, torch.Tensor], real: dict[str, torch.Tensor],
                      strength: float) -> dict[str, torch.Tensor]:
    """(1 - S)·clean + S·real for floating tensors (in float64, cast back); other tensors must agree."""
    if clean.keys() != real.keys():
        odd = sorted(set(clean) ^ set(real))[:5]
        raise CheckpointError("--denoise", f"the clean and real models differ in their tensors ({', '.join(odd)})")
    mixed = {}
    for key, c in clean.items():
        r = real[key]
        if c.shape != r.shape:
            raise CheckpointError("--denoise", f"{key}: clean {tuple(c.shape)} vs real {tuple(r.shape)}")
        if c.is_floating_point():
            mixed[key] = ((1.0 - strength) * c.double() + strength * r.double()).to(c.dtype)
        elif torch.equal(c, r):
            mixed[key] = c.clone()
        else:
            raise CheckpointError("--denoise", f"{key}: integer tensor differs between the clean and real models")
    return mixed


def check_strength(strength: float) -> float:
    if not 0.0 <= strength <= 1.0:  # also refuses NaN
        raise ValueError(f"--denoise {strength:g}: give a strength from 0 (the clean model) to 1 (the real model)")
    return float(strength)


def denoise_name(clean: ModelEntry, strength: float) -> str:
    """The display name of a --denoise mix, e.g. `ribsr-s-x2+real@0.5` (reports and `--name {model}`)."""
    return f"{clean.name}+real@{strength:g}"


def load_denoised(clean_entry: ModelEntry, real_entry: ModelEntry, strength: float,
                  device: str = "cpu") -> LoadedModel:
    """The clean network carrying the interpolated weights of a `denoise_pair`, named and with both hashes."""
    from ribsr_cli.engine.registry import load_entry

    strength = check_strength(strength)
    clean, real = load_entry(clean_entry, device), load_entry(real_entry, device)
    clean_state = clean.network.state_dict()
    if clean.config != real.config:
        if clean.config is None or real.config is None or not can_grow(clean.config, real.config):
            raise CheckpointError(real_entry.path, f"{real_entry.name} and {clean_entry.name} differ in architecture "
                                                   "(beyond extra blocks); they cannot be interpolated")
        # a deeper or damage-conditioned real model: the clean weights grown to its shape compute exactly the
        # clean model; a conditioned model's damage estimator has no clean counterpart and is its own on both ends
        clean_state = {**grow_state(clean_state, clean.config, real.config),
                       **estimator_keys(real.network.state_dict())}
    net = real.network  # the real model's architecture: the clean one's, or deeper
    with torch.no_grad():
        net.load_state_dict(interpolate_state(clean_state, real.network.state_dict(), strength))
    components = ({"name": clean_entry.name, "sha256": clean_entry.sha256, "weight": 1.0 - strength},
                  {"name": real_entry.name, "sha256": real_entry.sha256, "weight": strength})
    return LoadedModel.of(net, denoise_name(clean_entry, strength), "shipped",
                          f"{clean_entry.sha256}+{real_entry.sha256}", components)
