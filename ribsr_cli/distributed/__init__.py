"""Running ribsr past one process: `ribsr upscale --ray` on Ray Data (ray_upscale).

Training under torchrun needs nothing here: training/ddp.py reads torchrun's environment itself.
Only the scheduling lives in this package; planning, reading, upscaling and writing are the local code.
"""
