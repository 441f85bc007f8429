"""Image I/O and metrics, independent of the model. This file stays import-free so that light commands
(`ribsr --help`, `ribsr models`) can read the constants below without loading numpy or Pillow."""

#: the largest image (width x height) read by default: a decompression-bomb guard (`upscale --max-pixels`)
DEFAULT_MAX_PIXELS = 250_000_000
