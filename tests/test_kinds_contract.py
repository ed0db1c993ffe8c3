"""One contract for every kind of run (taskvec.kinds.KINDS, issue 22), checked the same way for each kind:

* ``tv.run(cfg, out)`` makes a run directory whose ``config.json`` names the kind, and ``run_kind`` reads it back;
* rerun from its ``config.json`` (``config_from(Config, out/config.json, {})``) is the same config;
* killed half way (``results.jsonl`` cut after half its units) and resumed, it ends with the same units and rows, and a
  resume of a finished run runs nothing (``results.jsonl`` unchanged, byte for byte);
* ``tv.write_report(out)`` writes ``report.html`` from the directory alone;
* the run writes only the entries its kind declares (``KINDS[kind].artifacts``, named in ``taskvec.artifacts``), and
  its ``tables(out)`` are DataFrames read from its store (issue 22: one run-directory schema).

Every kind is in the table below: a kind added to KINDS without a tiny config fails here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import taskvec as tv
from taskvec.kinds import run_kind
from taskvec import artifacts as A
from taskvec.experiment import config_from
from taskvec.kinds import KINDS


def _tiny(name: str, tmp: Path):
    """A tiny config of kind ``name`` (a from-scratch model trained first for ``evaluate``)."""
    if name == "study":
        return tv.StudyConfig(model="smollm2-135m", tasks=["antonyms"], n_trials=2, n_select=2, n_eval=2,
                              n_local_select=2, n_local_eval=2, n_demos=3, demo_counts=[0], fv_n_cie=1, fv_k=2,
                              fv_template="", kofn_ks="grid")
    if name == "saliency":
        return tv.SaliencyConfig(model="smollm2-135m", tasks=["simple_string", "antonyms"], n_trials=2, n_demos=2)
    if name == "dpca":
        return tv.DPCAConfig(model="smollm2-135m", task="simple_string", n_trials=8, n_demos=4, layers=[2, 3],
                             ablate_layers=[], n_boot=5, probe_folds=2)
    if name == "heads":
        return tv.HeadsConfig(model="smollm2-135m", task="simple_string", n_trials=2, n_demos=3, modes=["mean"],
                              layers=[0])
    if name == "train":
        return tv.TrainConfig(preset="tiny", task={"name": "token_offset"}, steps=4, log_every=2, save_every=2)
    if name == "evaluate":
        trained = tv.run(_tiny("train", tmp), tmp / "trained", progress=False, tensorboard=False, report=False)
        return tv.EvalConfig(models={"tiny": str(trained / "model")}, n_trials=8, analyses=["layers", "noisy"])
    if name == "compare":
        return tv.ComparisonConfig(train={"preset": "tiny", "task": {"name": "token_offset"}, "k_max": 4, "steps": 2,
                                          "batch_size": 4, "save_every": 2, "log_every": 1},
                                   arms=[{"name": "vanilla"}, {"name": "tvp", "tvp_layer": 1}], layouts=["x→y"],
                                   seeds=[0], evaluation={"n_trials": 8, "k": 2, "analyses": ["layers"]})
    raise AssertionError(f"no tiny config for the kind {name!r}: add one to tests/test_kinds_contract.py")


def _options(name: str, smol) -> dict:
    if KINDS[name].takes_lm:
        return {"lm": smol}
    return {"progress": False, **({"tensorboard": False} if name == "train" else {})}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow  # seven real runs, about a minute on 2 cores: CI's slow step
@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_keeps_the_contract(name, smol, tmp_path):
    cfg = _tiny(name, tmp_path)
    out = tmp_path / "run"
    opts = _options(name, smol)
    run_dir = tv.run(cfg, out, **opts)
    assert run_dir == out and (out / "report.html").exists()
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")}  # .lock and temp files aside
    declared = set(KINDS[name].artifacts)
    assert written <= declared, f"{name} wrote entries it does not declare: {sorted(written - declared)}"
    assert {A.CONFIG, A.RESULTS, A.REPORT} <= written
    tables = KINDS[name].tables(out)
    assert len(tables) and all(isinstance(tables[t], pd.DataFrame) for t in tables), name
    saved = json.loads((out / "config.json").read_text())
    assert saved["kind"] == name and run_kind(out) == name
    again = config_from(type(cfg), out / "config.json", {})
    assert again.saved() == cfg.saved()  # rerun from config.json: the same config

    whole = (out / "results.jsonl").read_bytes()
    tv.run(again, out, resume=True, report=False, **opts)
    assert (out / "results.jsonl").read_bytes() == whole  # a finished run resumed runs nothing

    records = _records(out)
    done = [r["unit"] for r in records]
    keep = len(done) // 2  # killed half way (a one-unit run: before its unit was recorded)
    (out / "results.jsonl").write_bytes(b"".join(line + b"\n" for line in whole.splitlines()[:keep]))
    if name == "train":  # a kill loses the checkpoints after the last recorded interval too (rows go first)
        last = max([int(u.split("-")[1]) for u in done[:keep]], default=0)
        for ckpt in (out / "checkpoints").glob("step-*"):
            if int(ckpt.name.split("-")[1]) > last:
                shutil.rmtree(ckpt)
        shutil.rmtree(out / "model")
    tv.run(again, out, resume=True, report=False, **opts)
    resumed = _records(out)
    assert sorted(r["unit"] for r in resumed) == sorted(done)
    rows = lambda recs: {r["unit"]: r.get("rows") for r in recs}  # noqa: E731
    if name not in ("train", "compare"):  # the model-free units are deterministic to the last bit on one machine
        assert rows(resumed) == rows(records)

    (out / "report.html").unlink()
    assert tv.write_report(out) == out / "report.html" and (out / "report.html").stat().st_size > 1000
