"""`ribsr bench`: the JSON it writes, the RIB correctness guard, and clean usage errors.

The runs use the tiny `ribsr-s` preset, few repeats and one thread (steady
when a neighbour keeps the other core busy) so the file stays well under a
minute on 2 CPU cores; the schema and guards are the same as for the default
SST-light run.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ribsr_cli import bench as bm
from ribsr_cli.bench import attention as bench_attention
from ribsr_cli.cli import app
from ribsr_cli.engine.runtime import cpu_native_bf16

ATTENTION_KEYS = {"window", "variant", "kernel", "dtype", "ms_median", "ms_p10", "ms_p90", "peak_mb", "train",
                  "repeats", "skipped", "note"}
NETWORK_KEYS = {"preset", "attn_type", "input", "kernel", "strategy", "ms_median", "ms_p10", "ms_p90", "peak_mb",
                "train", "repeats", "skipped", "note"}
FAST = ["--quick", "--preset", "ribsr-s", "--repeats", "2", "--threads", "1"]


def _bench(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def _assert_timed(row: dict) -> None:
    assert row["ms_median"] > 0 and row["peak_mb"] >= 0, row
    assert row["ms_p10"] <= row["ms_median"] <= row["ms_p90"], row


def test_quick_json_has_every_field_and_sane_values(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    result = _bench(*FAST, "--windows", "8,16", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # --threads applies to the run only
    data = json.loads(out.read_text())
    assert set(data) == {"env", "attention", "network", "check"}
    env = data["env"]
    auto = "bf16" if cpu_native_bf16() else "fp32"  # bench's auto is upscale's (issue 14)
    assert env["device"] == "cpu" and env["dtype"] == auto and env["threads"] >= 1
    assert env["torch"] == torch.__version__ and "backends" in env and "memory" in env
    assert env["threads"] == 1 and "load_avg_1m" in env
    tolerance = bm.TOLERANCE[torch.bfloat16 if auto == "bf16" else torch.float32]
    assert data["check"]["ok"] is True and 0 <= data["check"]["max_abs_err"] <= tolerance

    rows = data["attention"]
    assert all(set(r) == ATTENTION_KEYS for r in rows)
    assert {(r["window"], r["variant"]) for r in rows} >= {
        (ws, v) for ws in (8, 16) for v in ("rib", "rpb-dense", "rpb-sdpa", "rpb-flex", "nope")}
    for r in rows:
        assert r["dtype"] == auto and r["train"] is False
        if r["skipped"]:  # the reason has its own field; a skipped row ran no kernel (issue 18)
            assert r["ms_median"] is None and r["kernel"] is None and r["repeats"] == 0
        else:
            assert r["kernel"] and r["repeats"] == 2
            _assert_timed(r)
    kernels = {r["variant"]: r["kernel"] for r in rows if r["window"] == 8}
    assert kernels["rpb-dense"] == "math" and kernels["rib"].startswith("sdpa")
    assert kernels["rpb-flex"] is None  # --quick does not compile flex_attention
    assert [r["skipped"] for r in rows if r["variant"] == "rpb-flex"][0].startswith("skipped")
    assert env["repeats"] == 2 and env["repeats_chosen_by"] == "--repeats"

    net = data["network"]
    assert all(set(r) == NETWORK_KEYS for r in net)
    assert {r["attn_type"] for r in net} >= {"RIB", "RPB"}
    for r in net:
        assert r["preset"] == "ribsr-s-x4" and r["train"] is False and r["input"] == "64x36"
        assert r["kernel"].startswith("sdpa") and r["strategy"] in ("bias", "concat") and r["repeats"] == 2
        _assert_timed({**r, "ms_p10": r["ms_median"], "ms_p90": r["ms_median"]})

    assert "Window attention" in result.output and "rpb/rib" in result.output
    assert "check ok" in result.output.splitlines()[-1]


def test_train_mode_times_backward_and_a_training_step(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    result = _bench(*FAST, "--windows", "8", "--train", "--batch", "1", "--patch", "16", "-q", "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert all(r["train"] for r in data["attention"])
    train_rows = [r for r in data["network"] if r["train"]]
    assert {r["attn_type"] for r in train_rows} >= {"RIB", "RPB"} and train_rows[0]["input"] == "1x16x16"
    assert all(r["ms_median"] > 0 for r in train_rows)
    assert len(result.output.strip().splitlines()) == 1  # -q: the summary line only


def test_guard_aborts_on_a_wrong_rib_path(tmp_path: Path) -> None:
    out = tmp_path / "never.json"
    result = _bench("--quick", "--preset", "ribsr-s", "--_corrupt-rib", "--json", str(out))
    assert result.exit_code == 1
    assert "RIB check failed" in result.output and "nothing was timed" in result.output
    assert not out.exists()


def test_check_tolerance_follows_dtype() -> None:
    shape = bm.CoreShape.from_config(bm.resolve_preset("ribsr-s")[1])
    check = bm.check_rib(shape, [8], torch.device("cpu"), torch.bfloat16, ["auto"])
    assert check.ok and check.tolerance == 2e-2 and check.max_abs_err > 0
    bad = bm.check_rib(shape, [8], torch.device("cpu"), torch.float32, ["math"], corrupt=True)
    assert not bad.ok and bad.max_abs_err > 1e-2 and "window 8" in bad.details[0]


@pytest.mark.parametrize("windows", ["8,x", "8,,16", "0", "1000", "8.5"])
def test_bad_windows_are_usage_errors(windows: str) -> None:
    result = _bench("--quick", "--windows", windows)
    assert result.exit_code == 2
    assert "--windows" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--size", "1280"], ["--dtype", "fp8"], ["--device", "tpu"],
                                  ["--preset", "nonsense"]])
def test_other_bad_options_are_usage_errors(args: list[str]) -> None:
    result = _bench("--quick", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_parse_windows_keeps_order_and_drops_repeats() -> None:
    assert bm.parse_windows(" 16, 8,16 ") == [16, 8]
    assert bm.parse_size("640X360") == (640, 360)


def test_comparison_says_when_rib_is_slower() -> None:
    def row(variant: str, ms: float) -> bm.AttentionRow:
        return bm.AttentionRow(times_ms=[ms], peak_mb=1.0, window=8, variant=variant, kernel="k", dtype="fp32")

    rows = [row("rib", 2.0), row("rpb-dense", 4.0), row("rpb-sdpa", 1.0), row("rpb-flex", 1.98), row("nope", 1.0)]
    comps = bm.compare_attention(rows)
    assert comps[1].rpb_over_rib == 2.0 and not comps[1].note
    assert math.isclose(comps[2].rpb_over_rib, 0.5) and comps[2].note == "RIB 2.00x slower here"
    assert "no clear difference" in comps[3].note
    assert comps[0].rib_over_nope == 2.0


def test_plot_without_matplotlib_is_a_clear_usage_error(tmp_path: Path) -> None:
    if bm.plot_available():
        pytest.skip("matplotlib is installed")
    result = _bench("--quick", "--plot", str(tmp_path / "p.png"))
    assert result.exit_code == 2 and "matplotlib" in result.output


def test_flex_rows_run_for_every_window_and_match_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flex plumbing (score_mod indexing, one job per window) without paying ~10 s of compiling
    per window: eager flex_attention computes the same thing, unfused."""
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(bench_attention, "compiled_flex_attention", lambda: flex_attention)
    opts = bm.Options(windows=[4, 8], repeats=1, threads=1, quick=True, flex=True, network=False)
    shape = bm.CoreShape.from_config(bm.resolve_preset("ribsr-s")[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "flex_attention called without torch.compile()"
        rows = bm.run_attention(opts, shape, torch.device("cpu"), torch.float32, {}, lambda _m: None)
    flex_rows = [r for r in rows if r.variant == "rpb-flex"]
    assert [r.window for r in flex_rows] == [4, 8]
    # timed, and within tolerance of rpb-dense (a mismatch would be written into the note)
    assert all(r.ms_median and r.ms_median > 0 and not r.skipped and not r.note for r in flex_rows), flex_rows
