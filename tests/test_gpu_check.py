"""The GPU check's dry run (``make gpu-check DEVICE=cpu``): every step runs on tiny sizes, as the GPU machine runs it
(``python benchmarks/gpu_check.py`` with ``PYTHONPATH=src``, no install), writes the JSON keys the GPU run writes,
and passes; ``--device cuda`` without a GPU is one line. About 20 s on 2 CPU cores."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_dry_run_passes_every_check_and_writes_the_gpu_keys(tmp_path):
    gc = _module()
    out = tmp_path / "gpu_check-cpu.json"
    proc = _run("--device", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads(out.read_text())
    assert tuple(report) == gc.KEYS
    for name in gc.CHECKS:
        record = report[name]
        assert set(gc.RECORD) <= set(record), name
        assert record["ok"] is True and record["skipped"] is None, (name, record.get("error"))
    assert report["summary"]["ok"] and report["summary"]["failed"] == report["summary"]["skipped"] == []
    assert report["environment"]["missing_line"].startswith("missing: nothing")
    families = report["families"]["per_family"]
    assert set(families) == set(gc.SIZES["cpu"]["families"]) == set(report["cuda_vs_cpu"]["per_family"])
    for family, r in families.items():
        assert set(r["max_abs_diff"]) == set(r["tolerance"]) == {"capture_fp32", "sweep_fp32", "capture_bf16",
                                                                  "sweep_bf16"}, family
        assert r["write_effect"] > 4 * gc.TOL["sweep_bf16"]  # the bf16 tolerance is well below what a write does
    assert "disk" in report["device_map"]["placement"] and "cpu" in report["device_map"]["placement"]
    runs = report["scratch_paper"]["runs"]
    assert set(runs) == {"vanilla", "tvp"} and runs["tvp"]["tvp_layer"] == 1 and runs["vanilla"]["tvp_layer"] is None
    assert all(r["steps"] > 1 and r["steps_per_s"] > 0 and 0 < r["eval_icl_err"] < 10 for r in runs.values())
    top = report["sweep_throughput"]["largest"]
    assert top["ours_per_s"] > 0 and top["naive_per_s"] > 0 and top["variants"] >= top["naive_variants"]
    text = out.with_suffix(".txt").read_text()
    assert text.splitlines()[-1].startswith("PASS") and text.strip() in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_one_line(tmp_path):
    proc = _run("--device", "cuda", "--json", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: no CUDA device: run `make gpu-check DEVICE=cpu` for the dry run\n"
    assert not (tmp_path / "x.json").exists()


def test_make_gpu_check_runs_the_script_from_the_tree():
    """The target needs no install: the repo's src on PYTHONPATH, the device defaulting to cuda."""
    made = {}
    for device in ("", "DEVICE=cpu"):
        proc = subprocess.run(["make", "-n", "gpu-check", *([device] if device else []), "PYTHON=python3"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        made[device] = " ".join(proc.stdout.replace("\\\n", " ").split())
    assert "PYTHONPATH=src:" in made[""] and "python3 benchmarks/gpu_check.py --device cuda" in made[""]
    assert "benchmarks/gpu_check.py --device cpu" in made["DEVICE=cpu"]
