"""scripts/soup.py: two runs' best EMAs averaged into a run folder that `ribsr export` ships and names.

The two "runs" are the shipped ×2 clean weights moved apart by two seeded perturbations, saved the way the
trainer saves best.safetensors, so the average is checked on genuinely different weight sets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import BENCHMARKS, REPO
from ribsr_cli.engine.checkpoint import load_model, save_model

pytestmark = pytest.mark.skipif(not (BENCHMARKS / "Set5").is_dir(), reason="the soup is scored on Set5")


def _run(folder: Path, seed: int, steps: int, scale: int = 2) -> Path:
    net = load_model(REPO / "weights" / f"ribsr-s-x{scale}.safetensors")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02 * float(p.abs().mean()))
    folder.mkdir(parents=True)
    save_model(net, folder / "best.safetensors", {"steps": steps, "minutes": steps / 100, "arch_name": "ribsr-s",
                                                   "scale": scale, "seed": 0, "val_psnr_y": 31.0})
    (folder / "config.json").write_text(json.dumps({"scale": scale, "degradation": "real", "threads": 1,
                                                    "init_from": f"weights/ribsr-s-x{scale}.safetensors"}))
    return folder


def _soup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "soup.py"), *args, "--benchmarks", str(BENCHMARKS)],
                          capture_output=True, text=True, cwd=REPO)


def test_the_soup_is_the_average_and_export_names_its_ingredients(tmp_path: Path, monkeypatch) -> None:
    a, b = _run(tmp_path / "runs" / "a", 1, 300), _run(tmp_path / "runs" / "b", 2, 500)
    out = tmp_path / "runs" / "soup"
    done = _soup(str(a), str(b), "--out", str(out))
    assert done.returncode == 0, done.stderr
    soup = load_model(out / "best.safetensors")
    sa, sb = load_model(a / "best.safetensors").state_dict(), load_model(b / "best.safetensors").state_dict()
    for key, value in soup.state_dict().items():
        torch.testing.assert_close(value, (sa[key] + sb[key]) / 2, rtol=0, atol=1e-7)
    prov = soup.provenance
    assert prov["steps"] == 800 and [i["run"] for i in prov["soup_of"]] == ["a", "b"]
    assert 25 < prov["val_psnr_y"] < 40 and prov["val_degradation"] == "real"

    c = _run(tmp_path / "runs" / "c", 3, 200)  # a soup may be an ingredient; its own ingredients travel with it
    config = json.loads((c / "config.json").read_text())
    (c / "config.json").write_text(json.dumps(dict(config, degradation_overrides={"camera_prob": 1.0})))
    nested = tmp_path / "runs" / "nested"
    assert _soup(str(c), str(out), "--out", str(nested)).returncode == 0
    inner = load_model(nested / "best.safetensors").provenance["soup_of"]
    assert [i["run"] for i in inner] == ["c", "soup"] and [i["run"] for i in inner[1]["soup_of"]] == ["a", "b"]
    assert inner[0]["degradation_overrides"] == {"camera_prob": 1.0} and "degradation_overrides" not in inner[1]
    assert "degradation_overrides" not in json.loads((nested / "config.json").read_text())

    trial = tmp_path / "weights"
    shutil.copytree(REPO / "weights", trial)
    monkeypatch.setenv("RIBSR_WEIGHTS_DIR", str(trial))
    from ribsr_cli.training.export import export

    entry = export(out, "ribsr-s-real-x2", False, BENCHMARKS, REPO / "examples" / "chelsea.png")
    assert entry["variant"] == "real" and entry["training"]["init_from"] == "ribsr-s-x2"
    assert entry["training"]["selected"].startswith("uniform average (model soup) of the best EMAs of a, b")
    assert entry["metrics_degraded"]["Set5"]["psnr_y"] == pytest.approx(prov["val_psnr_y"], abs=1e-3)


def test_runs_of_different_scales_do_not_mix(tmp_path: Path) -> None:
    a, b = _run(tmp_path / "a", 1, 300), _run(tmp_path / "b", 2, 300, scale=4)
    done = _soup(str(a), str(b), "--out", str(tmp_path / "soup"))
    assert done.returncode == 2 and "share scale" in done.stderr
    assert not (tmp_path / "soup").exists()
