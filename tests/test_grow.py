"""engine.grow: a deeper SST grown from a trained one upscales a real photo exactly as the original does.

This is what lets the ribsr-s6 real-photo models start from the shipped ribsr-s weights and still pair with
them for `--denoise` (the pair's own tests are in test_real_models.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ribsr_cli.engine.checkpoint import detect_arch, load_model, save_model
from ribsr_cli.engine.config import SSTConfig
from ribsr_cli.engine.grow import can_grow, count_blocks, deeper, grow_state
from ribsr_cli.engine.network import SST
from ribsr_cli.engine.presets import get_config
from ribsr_cli.engine.tiling import upscale_image
from ribsr_cli.training.checkpointing import init_body_from

REPO = Path(__file__).resolve().parents[1]


def _photo(size: int = 64) -> np.ndarray:
    img = np.asarray(Image.open(REPO / "examples" / "coffee.png").convert("RGB"))
    return np.ascontiguousarray(img[120:120 + size, 200:200 + size])


@pytest.mark.parametrize("scale", [2, 4])
def test_a_grown_network_upscales_a_photo_bit_for_bit_as_the_original(scale: int) -> None:
    small = load_model(REPO / "weights" / f"ribsr-s-x{scale}.safetensors").eval()
    big = SST(deeper(small.config, 6)).eval()
    big.load_state_dict(grow_state(small.state_dict(), small.config, big.config))
    lr = _photo()
    with torch.no_grad():
        assert np.array_equal(upscale_image(small, lr, scale), upscale_image(big, lr, scale))
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the CPU default precision too
            assert torch.equal(small(x), big(x))


def test_new_blocks_copy_trained_blocks_with_their_closing_conv_zeroed() -> None:
    small = load_model(REPO / "weights" / "ribsr-s-x2.safetensors")
    state = small.state_dict()
    grown = grow_state(state, small.config, deeper(small.config, 7))
    assert count_blocks(grown) == 7
    last_conv = len(small.config.window_sizes)
    for k, source in zip(range(3, 7), (0, 1, 2, 0)):
        assert torch.equal(grown[f"body.{k}.0.attn.to_q"], state[f"body.{source}.0.attn.to_q"])
        assert not grown[f"body.{k}.{last_conv}.weight"].any() and not grown[f"body.{k}.{last_conv}.bias"].any()
    # the closing LayerNorm and conv moved behind the new blocks, unchanged
    assert torch.equal(grown["body.7.weight"], state["body.3.weight"])
    assert torch.equal(grown["body.8.weight"], state["body.4.weight"])
    # a six-block growth is recognised by its key layout as the ribsr-s6 preset
    six = detect_arch(grow_state(state, small.config, deeper(small.config, 6)))
    assert (six["n_blocks"], six["window_sizes"]) == (6, [8, 16])


def test_only_the_block_count_and_damage_channels_may_grow() -> None:
    base = get_config("ribsr-s", 2)
    assert can_grow(base, get_config("ribsr-s6", 2)) and can_grow(base, base)
    assert can_grow(base, get_config("ribsr-sd", 2)) and not can_grow(get_config("ribsr-sd", 2), base)
    assert not can_grow(get_config("ribsr-s6", 2), base)  # shrinking
    assert not can_grow(base, get_config("ribsr-s6", 4))  # another scale
    wider = SSTConfig.from_network_g(dict(get_config("ribsr-s6", 2).to_network_g(), dim=48))
    assert not can_grow(base, wider)
    with pytest.raises(ValueError, match="only n_blocks and damage_channels may grow"):
        grow_state(SST(base).state_dict(), base, wider)


def test_training_init_from_a_shallower_checkpoint_grows_it(tmp_path: Path) -> None:
    """`ribsr train --arch ribsr-s6 --init-from weights/ribsr-s-x4.safetensors` starts at the clean model."""
    source = load_model(REPO / "weights" / "ribsr-s-x4.safetensors").eval()
    saved = tmp_path / "clean.safetensors"
    save_model(source, saved)
    model = SST(get_config("ribsr-s6", 4)).eval()
    assert init_body_from(model, saved) == []  # every tensor came from the checkpoint
    lr = _photo(48)
    with torch.no_grad():
        assert np.array_equal(upscale_image(model, lr, 4), upscale_image(source, lr, 4))
