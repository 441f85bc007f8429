"""Reading a bench result: the ratios between rows, plain-word notes, the one-line summary and the plot.

No terminal output here (the tables are `commands/bench.py`'s); `benchmarks/gpu_suite.py` uses the same
comparisons for its JSON.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ribsr_cli import errors
from ribsr_cli.bench.core import Check
from ribsr_cli.bench.options import MAP_SIDE
from ribsr_cli.bench.timing import AttentionRow, NetworkRow
from ribsr_cli.fileutil import atomic_file


class PlotUnavailable(errors.UsageError, RuntimeError):
    """--plot needs matplotlib, an optional dependency."""


@dataclass
class Result:
    env: dict[str, Any]
    check: Check
    attention: list[AttentionRow] = field(default_factory=list)
    network: list[NetworkRow] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"env": self.env, "attention": [r.as_json() for r in self.attention],
                "network": [r.as_json() for r in self.network], "check": self.check.as_json()}


@dataclass
class Comparison:
    """How one attention row compares with RIB (and RIB with the no-position floor)."""

    rpb_over_rib: float | None = None
    mem_rpb_over_rib: float | None = None
    rib_over_nope: float | None = None
    note: str = ""


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def slower_note(rpb_over_rib: float | None) -> str:
    """Plain words where RIB is not faster: 'slower' beyond 5 %, 'no clear difference' within it."""
    if rpb_over_rib is None or rpb_over_rib >= 1.05:
        return ""
    if rpb_over_rib > 0.95:
        return "no clear difference (within 5 %)"
    return f"RIB {1 / rpb_over_rib:.2f}x slower here"


def compare_attention(rows: list[AttentionRow]) -> list[Comparison]:
    """Per row: rpb/rib time and memory for RPB rows, rib/nope for RIB rows, and a plain note."""
    by_key = {(r.window, r.variant): r for r in rows}
    out = []
    for row in rows:
        rib, nope = by_key.get((row.window, "rib")), by_key.get((row.window, "nope"))
        c = Comparison(note=row.note)
        if row.variant.startswith("rpb") and rib is not None:
            c.rpb_over_rib = _ratio(row.ms_median, rib.ms_median)
            c.mem_rpb_over_rib = _ratio(row.peak_mb, rib.peak_mb)
            extra = slower_note(c.rpb_over_rib)
            if extra:
                c.note = f"{c.note}; {extra}" if c.note else extra
        elif row.variant.startswith("rib") and nope is not None:
            c.rib_over_nope = _ratio(row.ms_median, nope.ms_median)
        out.append(c)
    return out


def compare_network(rows: list[NetworkRow]) -> list[float | None]:
    """RPB time / this row's time, within the same (train, input) group."""
    rpb = {(r.train, r.input): r for r in rows if r.attn_type == "RPB"}
    return [_ratio(rpb[(r.train, r.input)].ms_median, r.ms_median) if (r.train, r.input) in rpb else None
            for r in rows]


def _span(values: list[float]) -> str:
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}x"


def summary(result: Result) -> str:
    """One line for -q and logs: rpb/rib ranges over windows, network ratios, the check."""
    parts = []
    comps = compare_attention(result.attention)
    for variant in ("rpb-dense", "rpb-sdpa", "rpb-flex"):
        ratios = [c.rpb_over_rib for r, c in zip(result.attention, comps)
                  if r.variant == variant and c.rpb_over_rib is not None]
        if ratios:
            parts.append(f"{variant}/rib {_span(ratios)}")
    for row, ratio in zip(result.network, compare_network(result.network)):
        if row.attn_type == "RIB" and ratio is not None:
            parts.append(f"network {'train' if row.train else 'inference'} RPB/RIB {ratio:.2f}x")
    env = result.env
    check = f"check {'ok' if result.check.ok else 'FAILED'} (max err {result.check.max_abs_err:.1e})"
    return f"{env['device']} {env['dtype']}: " + ", ".join(parts + [check])


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def save_plot(result: Result, path: str | os.PathLike) -> None:
    """Latency and peak memory vs window size, one line per variant (log scale)."""
    if not plot_available():
        raise PlotUnavailable("--plot needs matplotlib: pip install 'ribsr[plot]' (or pip install matplotlib)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    variants = list(dict.fromkeys(r.variant for r in result.attention))
    for variant in variants:
        pts = [r for r in result.attention if r.variant == variant and r.ms_median is not None]
        if not pts:
            continue
        ws = [r.window for r in pts]
        ax_t.plot(ws, [r.ms_median for r in pts], marker="o", label=variant)
        ax_m.plot(ws, [max(r.peak_mb or 0.0, 1e-3) for r in pts], marker="o", label=variant)
    env = result.env
    mode = "train step" if any(r.train for r in result.attention) else "forward"
    windows = sorted({r.window for r in result.attention})
    for ax, label in ((ax_t, "median latency (ms)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xticks(windows)
        ax.set_xlabel("window size")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    ax_t.legend()
    fig.suptitle(f"RIB vs RPB window attention, {MAP_SIDE}x{MAP_SIDE} tokens, {mode} - "
                 f"{env['device_name']}, torch {env['torch']}, {env['dtype']}")
    fig.tight_layout()
    try:
        # The temporary file's name does not end in the target's suffix, so the format is named here
        # (no suffix: matplotlib's default, savefig.format).
        fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or None
        with atomic_file(path) as f:
            fig.savefig(f, dpi=120, format=fmt)
    finally:
        plt.close(fig)
