"""From-scratch training: loss decreases, resume is exact, NaN stops cleanly, config mismatch, DDP x2."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from taskvec.errors import ConfigError, NonFiniteError
from taskvec.scratch.model import ScratchModel
from taskvec.kinds import train
from taskvec.scratch.train import checkpoints, load_config, training_curve

TINY = dict(preset="tiny", task={"d": 4}, k_max=5, batch_size=8, save_every=2, log_every=1)


def run(cfg, out, **kw):
    return train(cfg, out, progress=False, tensorboard=False, report=kw.pop("report", False), **kw)


def params_of(path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in ScratchModel.from_pretrained(path).state_dict().items()}


def logs(out) -> list[dict]:
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


def test_short_run_decreases_the_loss(tmp_path):
    cfg = load_config(preset="tiny", task={"name": "token_offset", "offsets": [3]}, k_max=4, batch_size=16,
                      steps=60, lr=3e-3, log_every=1, save_every=100)
    run(cfg, tmp_path / "r")
    rows = logs(tmp_path / "r")
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["versions"]["torch"] == torch.__version__ and saved["kind"] == "train"
    assert saved["config"] == cfg.saved() and saved["world_size"] == 1
    assert (tmp_path / "r" / "log.csv").exists() and (tmp_path / "r" / "model" / "config.json").exists()


def test_tvp_run_logs_both_losses_and_tensorboard(tmp_path):
    cfg = load_config(**TINY, steps=2, tvp_layer=1)
    train(cfg, tmp_path / "r", progress=False, tensorboard=True, report=False)
    rows = logs(tmp_path / "r")
    assert rows[-1]["tvp_loss"] > 0 and abs(rows[-1]["loss"] - rows[-1]["icl_loss"] - rows[-1]["tvp_loss"]) < 1e-4
    assert any((tmp_path / "r" / "tb").iterdir())
    assert ScratchModel.from_pretrained(tmp_path / "r" / "model").config.tvp_layer == 1


class Killed(Exception):
    pass


def run_killed_at(kill_step: int, cfg, out) -> None:
    """Train until ``kill_step`` and die there, as a killed process would (checkpoints written so far stay)."""
    def kill(step, model):
        if step == kill_step:
            raise Killed

    with pytest.raises(Killed):
        run(cfg, out, on_step=kill)


def test_resume_after_interruption_is_exact(tmp_path):
    cfg = load_config(**TINY, steps=6, tvp_layer=1)
    run(cfg, tmp_path / "full")

    run_killed_at(3, cfg, tmp_path / "cut")
    assert [p.name for p in checkpoints(tmp_path / "cut")] == ["step-0000002"]
    with pytest.raises(ConfigError, match="already holds a run"):
        run(cfg, tmp_path / "cut")
    run(cfg, tmp_path / "cut", resume=True)
    a, b = params_of(tmp_path / "full" / "model"), params_of(tmp_path / "cut" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in logs(tmp_path / "full")] == [r["loss"] for r in logs(tmp_path / "cut")]
    # the run store holds one unit per checkpoint interval, the rows of the cut interval once (redone on resume)
    full, cut = training_curve(tmp_path / "full"), training_curve(tmp_path / "cut")
    assert list(cut.step) == [1, 2, 3, 4, 5, 6] and list(cut.loss) == list(full.loss)
    assert list(cut.unit.unique()) == ["train/step-0000002", "train/step-0000004", "train/step-0000006"]
    assert list(cut.drop(columns=["unit", "seq_per_s"]).itertuples()) == \
        list(full.drop(columns=["unit", "seq_per_s"]).itertuples())


def test_run_store_table_is_the_training_curve(tmp_path):
    from taskvec.runs import RunStore

    out = tmp_path / "r"
    cfg = load_config(**{**TINY, "save_every": 3}, steps=4, tvp_layer=1)
    run(cfg, out, report=True)
    assert "Training curves" in (out / "report.html").read_text()
    saved = json.loads((out / "config.json").read_text())
    table = RunStore(out, saved["config"], resume=True).table()
    assert list(table.unit) == ["train/step-0000003"] * 3 + ["train/step-0000004"]
    assert table.drop(columns="unit").to_dict("records") == logs(out)  # the logged rows, nothing else
    assert list(pd.read_csv(out / "log.csv").step) == [1, 2, 3, 4]
    # a longer run may continue the same directory (steps, save_every, log_every may change on resume)
    run(load_config(**{**TINY, "save_every": 3}, steps=6, tvp_layer=1), out, resume=True)
    assert list(training_curve(out).step) == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "config.json").read_text())["config"]["steps"] == 6
    # a kill between an interval's unit and its checkpoint: the steps are redone, the rows not written twice
    cut = tmp_path / "cut"
    run(cfg, cut)
    import shutil

    shutil.rmtree(checkpoints(cut)[-1])  # as if killed after appending train/step-0000004, before its checkpoint
    run(cfg, cut, resume=True)
    assert list(training_curve(cut).step) == [1, 2, 3, 4]


def test_resume_with_a_different_config_is_refused(tmp_path):
    run(load_config(**TINY, steps=2), tmp_path / "r")
    with pytest.raises(ConfigError, match=r"different config \(differs in: lr\)") as err:
        run(load_config(**TINY, steps=4, lr=1e-3), tmp_path / "r", resume=True)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="holds no run"):
        run(load_config(**TINY, steps=2), tmp_path / "empty", resume=True)


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    def poison(step, model):
        if step == 3:
            with torch.no_grad():
                model.read_in.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteError, match=r"step 4.*step-0000002"):
        run(load_config(**TINY, steps=6), tmp_path / "r", on_step=poison)
    ckpts = checkpoints(tmp_path / "r")
    assert [p.name for p in ckpts] == ["step-0000002"]
    restored = ScratchModel.from_pretrained(ckpts[-1])
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_ddp_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "taskvec", "train", "--out", str(out), "--preset", "tiny", "--dim", "4",
           "--k-max", "4", "--batch-size", "8", "--steps", "3", "--tvp-layer", "1", "--log-every", "1",
           "--save-every", "2", "--no-tensorboard"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in logs(out)] == [1, 2, 3]
    assert (out / "model" / "model.safetensors").exists()
    assert len(checkpoints(out)) == 2


def test_curriculum_stages_and_zeroed_inputs():
    from taskvec.scratch.tasks import make_task
    from taskvec.scratch.train import curriculum_at, sample_batch

    garg = load_config(task={"d": 10}, k_max=20, curriculum=True, curriculum_every=100)
    assert [curriculum_at(garg, s) for s in (1, 100, 101, 301, 10_000)] == [(5, 11), (5, 11), (6, 13), (8, 17),
                                                                           (10, 20)]
    cfg = load_config(task={"d": 10}, k_max=20, curriculum=True, curriculum_every=100, curriculum_start=1,
                      tvp_layer=2)
    assert curriculum_at(cfg, 1) == (1, 11) and curriculum_at(cfg, 250) == (3, 15)
    assert curriculum_at(load_config(task={"d": 10}, k_max=20), 1) == (10, 20)  # off by default
    batch = sample_batch(cfg, make_task(cfg.task), step=250, rank=0, batch=4)
    assert batch["xs"].shape == (4, 15, 10)
    for kx in ("xs", "xq"):  # demonstrations and TVP queries both live in the active subspace
        assert (batch[kx][..., 3:] == 0).all() and (batch[kx][..., :3] != 0).all()
    w_fit = torch.linalg.lstsq(batch["xs"][0, :, :3], batch["ys"][0]).solution  # labels use only those dims
    assert torch.allclose(batch["xs"][0, :, :3] @ w_fit, batch["ys"][0], atol=1e-4)
    with pytest.raises(ConfigError, match="curriculum_start"):
        load_config(curriculum_start=0)


@pytest.mark.parametrize("text, parsed, canonical", [
    ("constant", (0, 0), "constant"), (" Constant ", (0, 0), "constant"), ("warmup:100", (0, 100), "warmup:100"),
    ("after:500", (500, 0), "after:500"), ("warmup: 20, after:5", (5, 20), "after:5,warmup:20"),
])
def test_tvp_schedule_parses(text, parsed, canonical):
    from taskvec.scratch.train import parse_schedule

    assert parse_schedule(text) == parsed
    assert load_config(tvp_layer=1, tvp_schedule=text).tvp_schedule == canonical


@pytest.mark.parametrize("text", ["", "linear", "warmup", "warmup:", "warmup:0", "warmup:-5", "warmup:1.5",
                                  "warmup:ten", "after:3,after:4", "cosine:10", "constant,warmup:3", "warmup:3;",
                                  "warmup:²", "after:1e3"])
def test_bad_tvp_schedule_is_one_line(text):
    with pytest.raises(ConfigError, match=r"tvp_schedule: cannot read .*warmup:STEPS") as err:
        load_config(tvp_layer=1, tvp_schedule=text)
    assert "\n" not in str(err.value)


def test_tvp_schedule_needs_a_tvp_loss_and_cli_says_so_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="schedules the TVP-loss, but this run has none"):
        load_config(tvp_schedule="warmup:10")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "taskvec", "train", "--out", str(tmp_path / "r"),
                           "--tvp-layer", "1", "--tvp-schedule", "warmup:soon"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and not (tmp_path / "r").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: bad training config: tvp_schedule: cannot read 'warmup:soon': write constant, warmup:STEPS, "
        "after:STEPS or after:STEPS,warmup:STEPS (STEPS a whole number >= 1)"]


def test_lambda_at_steps():
    from taskvec.scratch.train import tvp_weight_at

    lam = lambda schedule, steps: [tvp_weight_at(load_config(tvp_layer=1, tvp_weight=0.5, tvp_schedule=schedule), s)
                                   for s in steps]  # noqa: E731
    assert lam("constant", [1, 1000]) == [0.5, 0.5]
    assert lam("warmup:4", [1, 2, 4, 5, 100]) == [0.125, 0.25, 0.5, 0.5, 0.5]
    assert lam("after:3", [1, 3, 4, 100]) == [0, 0, 0.5, 0.5]
    assert lam("after:3,warmup:2", [3, 4, 5, 6]) == [0, 0.25, 0.5, 0.5]
    assert tvp_weight_at(load_config(), 10) == 0  # vanilla


def test_resume_after_a_kill_mid_warmup_is_exact(tmp_path):
    """λ depends on the step alone: a run killed during the warm-up resumes onto the uninterrupted run's weights."""
    cfg = load_config(**TINY, steps=7, tvp_layer=1, tvp_weight=2.0, tvp_schedule="after:1,warmup:4")
    run(cfg, tmp_path / "full")

    run_killed_at(5, cfg, tmp_path / "cut")
    assert checkpoints(tmp_path / "cut")[-1].name == "step-0000004"  # killed at step 5, in the warm-up
    run(cfg, tmp_path / "cut", resume=True)
    a, b = params_of(tmp_path / "full" / "model"), params_of(tmp_path / "cut" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    full, cut = logs(tmp_path / "full"), logs(tmp_path / "cut")
    assert [r["tvp_weight"] for r in full] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert [(r["loss"], r["tvp_weight"]) for r in full] == [(r["loss"], r["tvp_weight"]) for r in cut]
    assert full[0]["tvp_loss"] > 0 and full[0]["loss"] == full[0]["icl_loss"]  # λ = 0: logged, not trained
    saved = json.loads((tmp_path / "cut" / "config.json").read_text())["config"]
    assert saved["tvp_schedule"] == "after:1,warmup:4"
    with pytest.raises(ConfigError, match=r"differs in: tvp_schedule"):
        run(load_config(**TINY, steps=8, tvp_layer=1, tvp_weight=2.0, tvp_schedule="warmup:4"), tmp_path / "cut",
            resume=True)


def test_a_run_written_before_tvp_schedule_still_resumes(tmp_path):
    """config.json of older runs has no tvp_schedule key: a constant schedule is not written, so they match."""
    out = tmp_path / "r"
    run(load_config(**TINY, steps=2, tvp_layer=1), out)
    saved = json.loads((out / "config.json").read_text())
    assert "tvp_schedule" not in saved["config"]
    run(load_config(**TINY, steps=4, tvp_layer=1), out, resume=True)
    assert [r["step"] for r in logs(out)] == [1, 2, 3, 4]


def test_lr_warmup_by_step_and_resume_is_exact(tmp_path):
    """The learning rate rises linearly over lr_warmup steps, is a function of the step alone (a run killed in the
    warm-up resumes onto the uninterrupted run's weights), and a run without warm-up saves no lr_warmup key."""
    from taskvec.scratch.train import lr_at

    cfg = load_config(**TINY, steps=6, lr=1e-3, lr_warmup=4)
    assert [lr_at(cfg, s) for s in (1, 2, 4, 5)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])
    run(cfg, tmp_path / "full")

    run_killed_at(3, cfg, tmp_path / "cut")
    run(cfg, tmp_path / "cut", resume=True)
    a, b = params_of(tmp_path / "full" / "model"), params_of(tmp_path / "cut" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt = torch.load(checkpoints(tmp_path / "full")[-1] / "trainer.pt", weights_only=False)["optimizer"]
    assert opt["param_groups"][0]["lr"] == pytest.approx(1e-3)
    # step 1 of the warm-up is the step of a run at lr / 4 without one: the optimizer used the warmed-up rate
    run(load_config(**TINY, steps=1, lr=1e-3, lr_warmup=4), tmp_path / "w1")
    run(load_config(**TINY, steps=1, lr=2.5e-4), tmp_path / "q1")
    a, b = params_of(tmp_path / "w1" / "model"), params_of(tmp_path / "q1" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "full" / "config.json").read_text())["config"]["lr_warmup"] == 4
    run(load_config(**TINY, steps=1), tmp_path / "plain")
    assert "lr_warmup" not in json.loads((tmp_path / "plain" / "config.json").read_text())["config"]
    with pytest.raises(ConfigError, match="lr_warmup must be >= 0"):
        load_config(lr_warmup=-1)


def test_bf16_autocast_trains_and_auto_is_fp32_on_cpu(tmp_path):
    """precision=bf16 autocasts the step (losses differ from float32 in the low bits, stay finite, parameters stay
    float32); auto means float32 on CPU, bit-identical to fp32."""
    from taskvec.scratch.train import autocast_dtype

    assert autocast_dtype(load_config(), "cpu") is None and autocast_dtype(load_config(), "cuda") == torch.bfloat16
    assert autocast_dtype(load_config(precision="bf16"), "cpu") == torch.bfloat16
    runs = {p: run(load_config(**TINY, steps=3, precision=p), tmp_path / p) for p in ("auto", "fp32", "bf16")}
    loss = {p: [r["loss"] for r in logs(tmp_path / p)] for p in runs}
    assert loss["auto"] == loss["fp32"] and loss["bf16"] != loss["fp32"]
    assert all(math.isfinite(x) for x in loss["bf16"]) and loss["bf16"] == pytest.approx(loss["fp32"], rel=0.05)
    assert all(v.dtype == torch.float32 for v in params_of(runs["bf16"]).values())
    with pytest.raises(ConfigError, match="precision"):
        load_config(precision="fp8")


def test_paper_config_runs_unchanged(tmp_path):
    """configs/scratch_paper.yaml (12 × 8 × 256, d = 20, k = 40, curriculum) loads and takes real steps; only the
    step count is overridden here."""
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / "scratch_paper.yaml", steps=2, save_every=2,
                      log_every=1)
    assert (cfg.preset, cfg.task.d, cfg.k_max, cfg.curriculum) == ("paper", 20, 40, True)
    model = ScratchModel.from_pretrained(run(cfg, tmp_path / "paper"))
    assert (model.n_layers, model.config.n_head, model.config.n_embd) == (12, 8, 256)
    assert len(logs(tmp_path / "paper")) == 2
