"""Foreign (non-SST) upscaling models through spandrel, adapted to ribsr's tiler and runner.

spandrel detects an architecture from a state dict's keys and returns a model descriptor: the network plus
what a runner must honour (scale, input/output channels, size requirements, half-precision support, tiling
advice, purpose). `ForeignModel` turns that into what ribsr's tiler expects of a network:
- `.scale`, and `.window_sizes` = the grid tile starts snap to (the size multiple, or the model's window), so
  tiles see the windows a whole-image pass sees;
- `forward(rgb)` on (B, 3, H, W) floats in [0, 1]: pads to the size requirements (spandrel's reflect/replicate
  rule) and crops back, feeds grey models luma, widens grey output to RGB, clamps to [0, 1];
- `choose_dtype` for `runner.Upscaler`: fp32 where spandrel says bf16/fp16 is unsupported, with a note;
- `kernel_report()` for reports: the architecture and the precision that ran.

The checkpoint itself is always read by ribsr (`checkpoint.read_state_dict`: safetensors, or `.pth` with
`weights_only=True`), never by spandrel's unpickler, so a pickle with code in it is refused the same way for
every architecture.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ribsr_cli.engine.spandrel_import import import_spandrel
from ribsr_cli.errors import CheckpointError
from ribsr_cli.pixels import LUMA

FAMILY = "spandrel"
_DTYPE_FLAGS = {torch.bfloat16: ("supports_bfloat16", "bf16"), torch.float16: ("supports_half", "fp16")}


class ForeignModel(nn.Module):
    """A spandrel image model with the interface of ribsr's SST for the tiler, the runner and the reports."""

    def __init__(self, descriptor: Any) -> None:
        super().__init__()
        self.net = descriptor.model  # registered, so .to()/.eval()/.parameters() reach the real weights
        self.descriptor = descriptor
        self.family = FAMILY
        self.arch_name: str = descriptor.architecture.name
        self.arch_id: str = str(descriptor.architecture.id)
        self.tags: list[str] = list(descriptor.tags)
        self.scale: int = int(descriptor.scale)
        self.input_channels: int = int(descriptor.input_channels)
        self.output_channels: int = int(descriptor.output_channels)
        req = descriptor.size_requirements
        self.multiple_of, self.minimum, self.square = int(req.multiple_of), int(req.minimum), bool(req.square)
        window = getattr(self.net, "window_size", None)
        self.window_sizes = [self.multiple_of] + ([window] if isinstance(window, int) and window > 1 else [])
        self.tiling: str = descriptor.tiling.name.lower()  # supported | discouraged | internal
        self.run_precision = "fp32"
        self.notes: list[str] = []

    def choose_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype to run in: `dtype`, or fp32 (with a note) where spandrel marks it unsupported."""
        flag, name = _DTYPE_FLAGS.get(dtype, (None, "fp32"))
        if flag is not None and not getattr(self.descriptor, flag):
            self.notes.append(f"{self.arch_name} does not support {name} (spandrel says so): running in fp32")
            dtype, name = torch.float32, "fp32"
        self.run_precision = name
        return dtype

    def kernel_report(self) -> dict[str, list[str]]:
        """What ran, in the shape of `attention_report`: architecture and precision instead of a kernel."""
        return {"kernels": [f"{self.arch_name} {self.run_precision} (spandrel)"], "strategies": []}

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb
        if self.input_channels == 1:
            weights = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
            x = (rgb * weights).sum(dim=1, keepdim=True)
        y = self.descriptor(x)  # pads to the size requirements, runs, clamps to [0, 1], crops the padding off
        if y.shape[1] == 1:
            y = y.expand(-1, 3, -1, -1)
        return y


def _refusal(descriptor: Any) -> str | None:
    """Why ribsr will not run this model (None: it will)."""
    purpose, name, scale = descriptor.purpose, descriptor.architecture.name, int(descriptor.scale)
    if purpose == "Inpainting":
        return f"{name} is an inpainting model (image + mask); ribsr runs upscaling models only"
    if purpose == "FaceSR":
        return f"{name} restores aligned face crops; ribsr runs whole-photo upscaling models only"
    if scale == 1 or purpose == "Restoration":
        return f"{name} is a restoration-only model (scale 1: denoise/deblur/JPEG); ribsr runs upscaling models only"
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels not in (1, 3):
        return (f"{name} takes {descriptor.input_channels} and gives {descriptor.output_channels} channels; "
                "ribsr runs grey or RGB models")
    return None


def load_foreign(state: dict[str, torch.Tensor], path: str | Path, device: str | torch.device = "cpu") -> ForeignModel:
    """A ready-to-run ForeignModel from a state dict ribsr has read; every failure is one CheckpointError."""
    spandrel = import_spandrel(path)
    try:
        with warnings.catch_warnings():  # architectures' own construction warnings (torch.meshgrid ...) are noise here
            warnings.simplefilter("ignore", UserWarning)
            descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise CheckpointError(path, "not an SST checkpoint, and spandrel recognises no architecture in its "
                                    f"{len(state)} tensors (first key {next(iter(state))!r})") from None
    except Exception as exc:  # noqa: BLE001 - detected but malformed: shapes that disagree, missing keys
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(path, f"spandrel could not load it: {text}") from None
    reason = _refusal(descriptor)
    if reason is not None:
        raise CheckpointError(path, reason)
    return ForeignModel(descriptor).to(device).eval()


def foreign_state_dict(model: ForeignModel) -> dict[str, torch.Tensor]:
    """The canonical weights (as spandrel names them), for storing as safetensors."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.net.state_dict().items()}
