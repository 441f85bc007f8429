"""ribsr: image upscaling with a RIB super-resolution Transformer (SST)."""

__version__ = "0.10.0"
