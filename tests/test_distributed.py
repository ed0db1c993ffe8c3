"""The study across processes (docs/distributed.md): rank files of one run store, merged and resumed whichever rank
ran a unit; two gloo ranks under torchrun give the numbers of one process; a rank killed mid-run loses nothing on
resume; ranks that disagree on the config stop with one line."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskvec.distributed import World
from taskvec.errors import ConfigError
from taskvec.runs import RunStore

CFG = dict(model="smollm2-135m", tasks=["antonyms", "simple_string"], n_trials=4, n_select=2, n_eval=3,
           n_local_select=2, n_local_eval=2, n_demos=3, demo_counts=[0], spans=["single"])
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module", autouse=True)
def _on_the_tiny_llama(tiny_llama):
    """CFG's study runs on the tiny Llama's checkpoint (SmolLM2's tokenizer, random weights; every process loads it
    by its path): these tests check that ranks reproduce one process's numbers and lose nothing, whatever the
    numbers are."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(CFG, "model", str(tiny_llama.path))
        yield


def _study(tmp: Path, out: Path, ranks: int = 1, *flags: str, **popen) -> list[str]:
    """The command line of the study on CFG: ``python -m taskvec`` or torchrun with ``ranks`` processes."""
    (tmp / "cfg.json").write_text(json.dumps(CFG))
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)] if ranks > 1 else \
        [sys.executable]
    return [*launch, "-m", "taskvec", "study", "local-global", "--config", str(tmp / "cfg.json"), "--out", str(out),
            *flags]


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_results(a: list[dict], b: list[dict], in_order: bool = True) -> None:
    """Same units (in the same order), the same rows (numbers within 1e-6); wall times are not compared."""
    if not in_order:
        a, b = sorted(a, key=lambda r: r["unit"]), sorted(b, key=lambda r: r["unit"])
    assert [r["unit"] for r in a] == [r["unit"] for r in b]
    for x, y in zip(a, b):
        assert len(x["rows"]) == len(y["rows"]), x["unit"]
        for r1, r2 in zip(x["rows"], y["rows"]):
            assert r1.keys() == r2.keys(), x["unit"]
            for k, v in r1.items():
                w = r2[k]
                if isinstance(v, float) and isinstance(w, float):
                    assert (math.isnan(v) and math.isnan(w)) or abs(v - w) <= 1e-6, (x["unit"], k, v, w)
                else:
                    assert v == w, (x["unit"], k, v, w)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The study on CFG in one process (the reference)."""
    tmp = tmp_path_factory.mktemp("single")
    _run(_study(tmp, tmp / "run"))
    return _records(tmp / "run" / "results.jsonl")


# ------------------------------------------------------------------------------------------- without torchrun
def test_tasks_are_dealt_round_robin():
    tasks = list("abcde")
    assert World().share(tasks) == tasks
    assert [World(r, 2).share(tasks) for r in (0, 1)] == [["a", "c", "e"], ["b", "d"]]


def test_a_world_of_one_takes_every_item_in_order_and_bad_costs_are_refused(tmp_path):
    tasks = list("abc")
    assert list(World().take(tasks, [1, 9, 5], tmp_path)) == tasks and not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="2 costs for 3 items"):
        list(World().take(tasks, [1, 2], tmp_path))


def test_ranks_take_each_item_once_costliest_first_and_a_new_launch_takes_anew(tmp_path):
    class Launch(World):  # the ranks of one launch agree on rank 0's launch id (gather), here without gloo
        def gather(self, obj):
            return [f"launch-{tmp_path.name}-{self.size}"] * self.size

    tasks, cost = list("abcde"), [1, 9, 5, 7, 3]
    r0, r1 = Launch(0, 2).take(tasks, cost, tmp_path), Launch(1, 2).take(tasks, cost, tmp_path)
    assert next(r0) == "b" and next(r1) == "d" and next(r1) == "c"  # whichever rank is free takes the next
    rest0, rest1 = list(r0), list(r1)
    assert sorted(["b", "d", "c", *rest0, *rest1]) == tasks and not set(rest0) & set(rest1)
    again = Launch(0, 3).take(tasks, cost, tmp_path)  # another launch: nothing is taken yet
    assert list(again) == ["b", "d", "c", "e", "a"]


def test_rank_files_are_one_run_store_that_resumes_with_any_world_size(tmp_path):
    cfg = {"seed": 0}
    with pytest.raises(ConfigError, match="rank 0 writes it"):
        RunStore(tmp_path, cfg, rank=1)  # a rank > 0 never makes the run
    r0 = RunStore(tmp_path, cfg, extra={"kind": "study"})
    r1 = RunStore(tmp_path, cfg, rank=1)  # opens rank 0's run without --resume: same world
    with pytest.raises(ConfigError, match="different config"):
        RunStore(tmp_path, {"seed": 1}, rank=1)
    saved = (tmp_path / "config.json").read_text()
    r0.append("a/icl", [{"task": "a", "score": 1.0}])
    r1.append("b/icl", [{"task": "b", "score": 0.5}])
    r1.append("c/vectors", [])  # a control task's vectors, needed by both ranks
    r0.append("c/vectors", [])
    r0.append("a/global", [{"task": "a", "score": 0.25}])
    with (tmp_path / "results.rank1.jsonl").open("a") as f:
        f.write('{"unit": "b/glo')  # rank 1 killed mid-write
    assert (tmp_path / "results.rank1.jsonl").exists() and (tmp_path / "config.json").read_text() == saved

    # resumed by a world of 3: every unit done by any rank is done for every rank, a cut line is redone
    r2 = RunStore(tmp_path, cfg, resume=True, rank=2)
    assert all(r2.done(u) for u in ("a/icl", "b/icl", "c/vectors", "a/global")) and not r2.done("b/global")
    r2.append("b/global", [{"task": "b", "score": 0.75}])
    t = RunStore(tmp_path, cfg, resume=True).table()
    assert sorted(t.unit) == ["a/global", "a/icl", "b/global", "b/icl"] and len(t) == 4

    # merged as one process would have written it: by task, each unit once, the rank files gone
    r0.merge(["a", "b"])
    assert sorted(p.name for p in tmp_path.glob("results*")) == ["results.jsonl"]
    assert [r["unit"] for r in _records(tmp_path / "results.jsonl")] == \
        ["a/icl", "c/vectors", "a/global", "b/icl", "b/global"]
    resumed = RunStore(tmp_path, cfg, resume=True)
    assert resumed.table().sort_values("unit").reset_index(drop=True).equals(
        t.sort_values("unit").reset_index(drop=True))
    r0.merge(["a", "b"])  # nothing to merge: unchanged
    assert len(_records(tmp_path / "results.jsonl")) == 5


# ------------------------------------------------------------------------------------------------ with torchrun
def test_two_gloo_ranks_give_the_results_of_one_process(single_run, tmp_path):
    """torchrun with 2 CPU ranks: tasks dealt over the ranks, rank files merged into results.jsonl in the order of
    a single-process run, the same rows, one report."""
    out = tmp_path / "run"
    res = _run(_study(tmp_path, out, 2))
    assert res.stdout.count("report: ") == 1  # rank 0 reports
    assert (out / "report.html").exists() and (out / "summary.csv").exists()
    assert sorted(p.name for p in out.glob("results*.jsonl")) == ["results.jsonl"]
    assert not list((out / "vectors").glob("*.tmp"))
    _assert_same_results(single_run, _records(out / "results.jsonl"))


def _pid_of_rank(tag: str, rank: int) -> int | None:
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            pairs = env.read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TASKVEC_TEST_TAG={tag}".encode() in pairs and f"RANK={rank}".encode() in pairs:
            return int(env.parent.name)
    return None


def _task_with_global_unit(path: Path) -> str | None:
    """The task whose ``<task>/global`` unit is finished in the rank file ``path``, or None (a line being written is
    not finished)."""
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            unit = json.loads(line)["unit"]
        except json.JSONDecodeError:
            continue
        if unit.endswith("/global"):
            return unit.split("/")[0]
    return None


def test_killing_a_rank_then_resuming_recomputes_nothing_that_finished(single_run, tmp_path):
    """Kill rank 1 of a 2-rank run once it has finished units (torchrun then stops rank 0); resume in a single
    process: every finished unit, of either rank, is kept byte for byte and not run again; the results equal a
    single-process run's."""
    out = tmp_path / "run"
    env = dict(ENV, TASKVEC_TEST_TAG=tmp_path.name)
    proc = subprocess.Popen(_study(tmp_path, out, 2), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    rank1 = out / "results.rank1.jsonl"
    try:
        deadline = time.time() + 300
        # the ranks take tasks from a queue, so either task may be rank 1's: wait for its global unit, whichever
        while (task := _task_with_global_unit(rank1)) is None:
            assert proc.poll() is None, "the run ended before a rank could be killed"
            assert time.time() < deadline, "rank 1 finished no unit within 300 s"
            time.sleep(0.02)  # the tiny model finishes units fast: look often
        os.kill(_pid_of_rank(tmp_path.name, 1), signal.SIGKILL)
        assert proc.wait(timeout=120) != 0  # torchrun stops the other rank and fails
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kept: dict[str, set[str]] = {}  # unit -> its records (a control task's vectors may be in both rank files)
    for line in (out / "results.jsonl").read_text().splitlines() + rank1.read_text().splitlines():
        try:
            kept.setdefault(json.loads(line)["unit"], set()).add(line)
        except json.JSONDecodeError:
            pass  # a line cut by the kill
    assert f"{task}/global" in kept and f"{task}/chance" not in kept  # killed mid-run

    _run(_study(tmp_path, out, 1, "--resume"))  # another world size: units are skipped from any rank's file
    final = (out / "results.jsonl").read_text().splitlines()
    by_unit = {json.loads(line)["unit"]: line for line in final}
    assert len(by_unit) == len(final)  # each unit once
    for unit, records in kept.items():  # kept verbatim (wall times included): nothing finished ran again
        assert by_unit[unit] in records, unit
    assert not rank1.exists() and (out / "report.html").exists()
    # a task split over two runs may list its units in another order; the rows are the same
    _assert_same_results(single_run, [json.loads(x) for x in final], in_order=False)


def test_ranks_that_disagree_on_the_config_stop_with_one_line(tmp_path):
    """Each rank passes its own --seed: every rank stops before loading a model; one `error:` line says why."""
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    script = tmp_path / "per_rank.py"
    script.write_text("import os, sys\nfrom taskvec.cli import main\n"
                      f"sys.argv = ['taskvec', 'study', 'local-global', '--config', {str(tmp_path / 'cfg.json')!r}, "
                      f"'--out', {str(tmp_path / 'run')!r}, '--seed', os.environ['RANK']]\nmain()\n")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: the 2 torchrun ranks disagree on the config: rank 1 differs from rank 0 in seed; "
                      "give every rank the same flags"]
    assert not (tmp_path / "run").exists()
