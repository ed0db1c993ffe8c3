"""Run directories stay safe (issue 24): config.json written atomically and refused when torn, results never
adopted without their config, records tied to the config they were produced under, a torn last line cut off on
resume, one writer per directory, a failed run replaced cleanly or resumed, report files written atomically and a
study killed while writing its report resumed to a whole one. Only that last test loads a model (smollm2-135m,
reusing the session's small study)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from taskvec.errors import ConfigError
from taskvec.runs import FAILED, LOCK, RunStore, read_records, skipped_lines

CFG = {"seed": 0, "n": 3}


def _store(path, cfg=CFG, **kw) -> RunStore:
    return RunStore(path, cfg, extra={"kind": "test"}, writer=True, **kw)


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_config_json_is_written_atomically_and_a_torn_one_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    _store(run).append("a", [{"x": 1}])
    assert json.loads((run / "config.json").read_text())["config"] == CFG
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
    for damage in ('{"config": {"seed": 0, "n"', "garbage", "[1, 2]", "\xff\xfe"):
        (run / "config.json").write_bytes(damage.encode("latin-1"))
        with pytest.raises(ConfigError) as err:
            RunStore.check(run, CFG, resume=True)
        assert "config.json" in _one_line(err) and "restore it" in str(err.value)


def test_results_without_config_are_refused_never_adopted(tmp_path):
    run = tmp_path / "run"
    _store(run).append("a", [{"x": 1}])
    (run / "config.json").unlink()
    with pytest.raises(ConfigError, match="holds run output \\(results.jsonl\\) but no config.json") as err:
        _store(run, {"seed": 1, "n": 3})  # used to reuse seed-0 units under a config claiming seed 1
    _one_line(err)
    vectors_only = tmp_path / "v"
    (vectors_only / "vectors").mkdir(parents=True)
    with pytest.raises(ConfigError, match="vectors"):
        RunStore.check(vectors_only, CFG, resume=True)


def test_records_carry_the_config_hash_and_an_edited_config_is_refused(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    _store(run).append("a", [{"x": 1}])
    _store(other, {"seed": 1, "n": 3}).append("b", [{"x": 2}])
    assert "config_hash" in json.loads((run / "results.jsonl").read_text())
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["seed"] = 1  # someone edits config.json by hand
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="config.json was edited") as err:
        _store(run, {"seed": 1, "n": 3}, resume=True)
    _one_line(err)
    (other / "results.jsonl").write_text((run / "results.jsonl").read_text())  # results of another run
    with pytest.raises(ConfigError, match="unit 'a' was produced under another config") as err:
        _store(other, {"seed": 1, "n": 3}, resume=True)
    _one_line(err)


def test_additive_keys_keep_old_records_valid(tmp_path):
    run = tmp_path / "run"
    _store(run, {**CFG, "more": False}, additive=("more",)).append("a", [{"x": 1}])
    grown = _store(run, {**CFG, "more": True}, resume=True, additive=("more",))
    grown.append("b", [{"x": 2}])
    assert sorted(RunStore(run, {**CFG, "more": True}, resume=True).table().unit) == ["a", "b"]  # a reader


def test_a_torn_last_line_is_cut_on_resume_and_a_garbage_middle_line_is_refused(tmp_path):
    run = tmp_path / "run"
    store = _store(run)
    store.append("a", [{"x": 1}])
    store.append("b", [{"x": 2}])
    store.close()
    results = run / "results.jsonl"
    whole = results.read_text()
    results.write_text(whole + '{"unit": "c", "ro')  # killed mid-write
    assert read_records(results)[1] == 1 and skipped_lines(run) == 1
    assert RunStore(run, CFG, resume=True).done("b")  # a reader tolerates it and cuts nothing
    assert results.read_text().endswith('"ro')
    resumed = _store(run, resume=True)
    assert results.read_text() == whole and skipped_lines(run) == 0
    assert list(pd.read_json(results, lines=True).unit) == ["a", "b"]  # the run's own store reads as JSONL
    resumed.append("c", [{"x": 3}])
    resumed.close()
    lines = results.read_text().splitlines()
    results.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match="line 2 is not a result record") as err:
        _store(run, resume=True)
    _one_line(err)


def _holder(run, seconds: float) -> subprocess.Popen:
    code = (f"import time\nfrom taskvec.runs import RunStore\ns = RunStore({str(run)!r}, {CFG!r}, writer=True)\n"
            f"print('ready', flush=True)\ntime.sleep({seconds})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.stdout.close()
    return proc


def test_a_second_process_on_the_same_directory_is_refused_and_a_stale_lock_taken_over(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run, 60)
    try:
        owner = json.loads((run / LOCK).read_text())
        assert owner["pid"] == proc.pid
        with pytest.raises(ConfigError, match=f"in use by another taskvec process \\(pid {proc.pid}\\)") as err:
            _store(run, resume=True)
        _one_line(err)
        with pytest.raises(ConfigError, match="in use"):
            RunStore.check(run, CFG, resume=True)  # refused before any model would load
        assert RunStore(run, CFG, resume=True).table().empty  # a reader (a report of a running study) is not
    finally:
        proc.kill()
    for _ in range(100):  # killed, but not reaped yet (a zombie): its lock is stale already
        if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    assert (run / LOCK).exists()  # killed: its lock is stale
    store = _store(run, resume=True)  # taken over
    assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    store.close()
    assert not (run / LOCK).exists()
    proc.wait()


def test_a_lock_is_released_when_the_store_goes_away(tmp_path):
    run = tmp_path / "run"
    _store(run).append("a", [])
    time.sleep(0)  # the store above was never bound: collected at once
    assert not (run / LOCK).exists()


def test_one_computation_of_several_units_runs_until_every_unit_is_stored(tmp_path):
    """``run_units``: one call makes every unit (the first carries the wall time); a run killed after some were
    appended recomputes once and appends only the missing ones; when all are done it does not run."""
    store = _store(tmp_path / "run")
    calls = []

    def make():
        calls.append(1)
        return {"t/a": [{"x": 1}], "t/b": [{"x": 2}, {"x": 3}]}

    store.append("t/a", [{"x": 1}])  # as if killed between the two appends
    assert store.run_units(["t/a", "t/b"], make) and len(calls) == 1
    assert not store.run_units(["t/a", "t/b"], make) and len(calls) == 1
    records = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["unit"] for r in records] == ["t/a", "t/b"] and records[1]["rows"] == [{"x": 2}, {"x": 3}]
    assert records[1]["seconds"] >= 0
    store.close()


def test_a_failed_run_is_replaced_by_a_rerun_and_resumed_by_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")  # was there before the run: never removed
    store = _store(run)
    store.run_unit("a", lambda: [{"x": 1}])
    (run / "vectors").mkdir()
    (run / "vectors" / "t.safetensors").write_text("stale")

    def boom():
        raise ValueError("out of memory")

    with pytest.raises(ValueError):
        store.run_unit("b", boom)
    store.close()
    assert "out of memory" in json.loads((run / FAILED).read_text())["error"]
    with pytest.raises(ConfigError, match="different config"):  # --resume with other settings: still refused
        _store(run, {"seed": 1, "n": 3}, resume=True)

    resumed = _store(run, resume=True)  # --resume: the finished unit is kept
    assert resumed.done("a") and not resumed.done("b") and not (run / FAILED).exists()
    with pytest.raises(ValueError):
        resumed.run_unit("b", boom)
    resumed.close()

    fresh = _store(run, {"seed": 1, "n": 3})  # no --resume: replaced cleanly
    assert not fresh.done("a") and not (run / "vectors").exists() and not (run / FAILED).exists()
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == 1


def test_a_run_that_did_not_fail_is_never_replaced(tmp_path):
    run = tmp_path / "run"
    _store(run).append("a", [])
    with pytest.raises(ConfigError, match="already holds a run"):
        _store(run)


def test_out_naming_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory") as err:
        _store(tmp_path / "f")
    _one_line(err)


def test_a_command_that_fails_marks_its_run_and_a_rerun_replaces_it(tmp_path, monkeypatch, capsys):
    """`taskvec train` stops on an error after its run directory exists: the directory is marked FAILED, a rerun
    without --resume starts clean in it (one line, no 'already holds a run'), and finishes."""
    import taskvec.scratch.train as training
    from taskvec.cli import main
    from taskvec.errors import NonFiniteError

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--preset", "tiny", "--d", "4", "--k-max", "5", "--batch-size", "8",
            "--steps", "2", "--save-every", "2", "--log-every", "1", "--no-tensorboard"]

    def fail(*a, **k):
        raise NonFiniteError("loss became nan at step 2")

    monkeypatch.setattr(training, "save_checkpoint", fail)
    with pytest.raises(SystemExit) as end:
        main(args)
    assert end.value.code == 2 and capsys.readouterr().err.strip().endswith("\nerror: loss became nan at step 2")
    assert (run / FAILED).exists() and (run / "config.json").exists() and not (run / LOCK).exists()
    monkeypatch.undo()
    with pytest.raises(SystemExit) as end:
        main(args)
    assert end.value.code == 0 and (run / "model" / "model.safetensors").exists() and not (run / FAILED).exists()
    assert [r["unit"] for r in read_records(run / "results.jsonl")[0]] == ["train/step-0000002"]


def test_an_empty_run_directory_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="run directory is empty"):
        _store("")
    assert list(tmp_path.iterdir()) == []


def test_a_run_from_before_record_hashes_resumes_and_reads_back(tmp_path):
    """config.json and records without hashes (an older taskvec): resumed with an additive key changed, the new
    records carry hashes that a plain reader accepts."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {**CFG, "steps": 2}, "versions": {}}))
    (run / "results.jsonl").write_text(json.dumps({"unit": "a", "rows": []}) + "\n")
    store = _store(run, {**CFG, "steps": 4}, resume=True, additive=("steps",))
    store.append("b", [])
    store.close()
    saved = json.loads((run / "config.json").read_text())
    assert len(saved["config_hashes"]) == 2 and saved["config"]["steps"] == 4  # the config before and after
    assert [r["unit"] for r in RunStore(run, saved["config"], resume=True)._records()] == ["a", "b"]


def test_atomic_writes_leave_the_old_file_or_the_new_one_never_a_torn_one(tmp_path, monkeypatch):
    from taskvec.runs import atomic_path, remove_stale_temps, write_text_atomic

    report = tmp_path / "report.html"
    write_text_atomic(report, "<html>old</html>\n")
    with pytest.raises(RuntimeError):
        with atomic_path(report) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".html"  # the suffix that picks a writer's format
            tmp.write_text("<html>half")
            raise RuntimeError("killed mid-write")
    assert report.read_text() == "<html>old</html>\n" and [p.name for p in tmp_path.iterdir()] == ["report.html"]

    def no_rename(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", no_rename)  # stopped between writing the whole temp file and the rename
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(report, "<html>new</html>\n")
    monkeypatch.undo()
    assert report.read_text() == "<html>old</html>\n" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    write_text_atomic(report, "<html>new</html>\n")
    assert report.read_text() == "<html>new</html>\n"

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # the temp files of a killed writer, and one of this (live) process
    stale = [tmp_path / f".report.{dead}.tmp.html", tmp_path / f".config.json.{dead}.tmp"]
    live = tmp_path / f".summary.{os.getpid()}.tmp.csv"
    for f in (*stale, live):
        f.write_text("half")
    assert remove_stale_temps(tmp_path) == 2
    assert not any(f.exists() for f in stale) and live.exists()


def test_tables_are_saved_atomically_as_csv_or_parquet(tmp_path, monkeypatch):
    """The analyses' and the from-scratch runs' tables go through save_table: a write stopped before the rename
    leaves the old table, whole."""
    from taskvec.runs import save_table

    old, new = pd.DataFrame({"layer": [0, 1], "x": [0.5, 0.25]}), pd.DataFrame({"layer": [0], "x": [1.0]})
    for name in ("summary.csv", "ablation.parquet"):
        path = save_table(old, tmp_path / name)
        read = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
        pd.testing.assert_frame_equal(read(path), old)

        def no_rename(*args):
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "replace", no_rename)
        with pytest.raises(KeyboardInterrupt):
            save_table(new, path)
        monkeypatch.undo()
        pd.testing.assert_frame_equal(read(path), old)
        save_table(new, path)
        pd.testing.assert_frame_equal(read(path), new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation.parquet", "summary.csv"]


def test_a_study_killed_while_writing_its_report_resumes_to_a_whole_report(small_study, tiny_llama, tmp_path):
    """kill -9 while the report is being written (its CSVs are out, its figures half drawn, no report.html yet),
    then --resume: no unit is lost or run again (results.jsonl stays byte for byte), every report file is whole, and
    the temp files the killed writer left are gone."""
    from conftest import SMALL_STUDY

    from taskvec.kinds import run_study
    from taskvec.study import StudyConfig

    run = tmp_path / "run"
    shutil.copytree(small_study, run, ignore=shutil.ignore_patterns(
        "report.html", "figures", "summary.csv", "evaluation.csv", "results.parquet", LOCK))
    units = (run / "results.jsonl").read_bytes()
    (tmp_path / "cfg.json").write_text(json.dumps(SMALL_STUDY))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    with open(tmp_path / "stderr.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "taskvec.cli", "study", "local-global", "--config",
                                 str(tmp_path / "cfg.json"), "--out", str(run), "--resume"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.time() + 300
        try:
            while not list((run / "figures").glob("*.png")):  # the report is being written
                assert proc.poll() is None, "the study ended before it was killed: " + \
                    (tmp_path / "stderr.txt").read_text()[-1500:]
                assert time.time() < deadline, "the report was not started within 300 s"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (run / "report.html").exists()  # killed while writing the report, not after it
    assert (run / "results.jsonl").read_bytes() == units
    pd.read_csv(run / "summary.csv")  # what was written before the kill is whole

    run_study(StudyConfig(**SMALL_STUDY), run, resume=True, lm=tiny_llama)
    assert (run / "results.jsonl").read_bytes() == units  # nothing lost, nothing repeated
    assert (run / "report.html").read_text().rstrip().endswith("</html>")
    assert set(pd.read_csv(run / "summary.csv").task) == {"antonyms", "simple_string"}
    assert not pd.read_csv(run / "evaluation.csv").empty and not pd.read_parquet(run / "results.parquet").empty
    leftovers = [p.name for d in (run, run / "figures") for p in d.iterdir() if ".tmp" in p.name]
    assert leftovers == [] and not (run / LOCK).exists() and not (run / FAILED).exists()


def test_a_run_from_before_an_upgrade_resumes_when_the_new_fields_hold_their_defaults(tmp_path):
    """config.json saved without a field that a newer taskvec added: a resume with that field at its default is
    accepted (and records it); at another value it is a different config, refused in one line."""
    import json

    from taskvec.analysis.runners import HeadsConfig
    from taskvec.experiment import open_store

    cfg = HeadsConfig(model="smollm2-135m", n_trials=2)
    older = {k: v for k, v in cfg.saved().items() if k not in ("null_task", "n_select")}  # an older version's
    store = RunStore(tmp_path / "run", older, extra={"kind": "heads"}, writer=True)
    store.append("heads/simple_string/mean", [{"layer": 0, "head": 0, "effect": 0.1}])
    store.close()
    assert set(cfg.newer_fields(tmp_path / "run")) == {"null_task", "n_select"}
    with pytest.raises(ConfigError, match="differs in: n_select"):
        RunStore.check(tmp_path / "run", cfg.model_copy(update={"n_select": 3}).saved(), resume=True,
                       additive=cfg.model_copy(update={"n_select": 3}).newer_fields(tmp_path / "run"))
    again = open_store(cfg, tmp_path / "run", resume=True)
    assert again.done("heads/simple_string/mean")
    again.close()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["null_task"] == "auto"
    assert cfg.newer_fields(tmp_path / "run") == ()
