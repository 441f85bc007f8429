"""Photo input/output for `ribsr upscale`: one import point for reading, writing and the float domain.

Reading lives in `io_read`, writing in `io_write`, metadata plumbing in `metadata`;
this module re-exports them (and `ribsr_cli.pixels`' conversions to the network's
RGB float domain and back) and adds the small helpers the upscaler needs between
them: format choice, and which files a folder scan takes for images (`IMAGE_EXTENSIONS`,
the one list for every command).
"""

from __future__ import annotations

from pathlib import Path

from ribsr_cli.imaging.io_read import ImageReadError, LoadedImage, read_image
from ribsr_cli.imaging.io_write import ImageWriteError, normalise_format, write_image
from ribsr_cli.pixels import from_float, to_float, to_rgb

__all__ = [
    "IMAGE_EXTENSIONS", "ImageReadError", "ImageWriteError", "LoadedImage", "from_float", "is_image_path",
    "output_format_for", "read_image", "to_float", "to_rgb", "write_image",
]

# The one list of what ribsr reads, by suffix: the formats `read_image` decodes (io_read.READ_FORMATS;
# PPM/PGM because some benchmark mirrors ship them). Every folder scan uses it: upscale's inputs, eval's
# benchmark sets, the training photos and the leak check's benchmark images.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".ppm", ".pgm"})
_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
_KEPT_AS_PNG = ("GIF", "PPM", "PGM")  # read, never written: `keep` writes them as lossless PNG (16-bit grey too)


def output_format_for(input_format: str, requested: str = "keep") -> tuple[str, str]:
    """(format, extension) to write: the input's own for 'keep' (GIF, PPM, PGM become PNG), else the request."""
    choice = str(requested).lower()
    if choice == "keep":
        source = str(input_format).upper()
        name = "PNG" if source in _KEPT_AS_PNG else normalise_format(source)
    else:
        name = normalise_format(choice)
    return name, _EXTENSIONS[name]


def is_image_path(path: str | Path) -> bool:
    """Whether this is an image file by its extension (any case): what a named input must be."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_scanned_image(path: str | Path) -> bool:
    """Whether a folder scan (upscale, eval, data prepare, the leak check) picks this file up: an image
    extension and not a hidden name. Dot-files are never photos a user meant: macOS's `._name.jpg`
    resource forks, editors' backups, and ribsr's own atomic-write temporaries (`fileutil.atomic_path`)."""
    return is_image_path(path) and not Path(path).name.startswith(".")
