"""A run owns its folder (issue 17): checkpoints carry the run's identity, a resume continues only
its own run, a new run does not start over another run's checkpoints, and a lock keeps a second
process out while the first one runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import mft.data.tokenize
from mft.run_folder import LOCK_FILE, OutputFolderLock, RunIdentity
from mft.train import main

from test_resume import HELD_RUN, stacks_of, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
SHORT = tiny_recipe(max_steps=20, save_strategy="steps", save_steps=10, save_total_limit=2)


def write(tmp_path: Path, text: str = SHORT) -> str:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(text)
    return str(recipe)


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_every_checkpoint_carries_the_runs_identity(tmp_path):
    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0
    folder = RunIdentity.read(out)
    assert folder is not None and folder.recipe["training.learning_rate"] == 3.0e-3
    assert "training.output_dir" not in folder.recipe and "training.logging_steps" not in folder.recipe
    for checkpoint in ("checkpoint-10", "checkpoint-20"):
        assert RunIdentity.read(out / checkpoint) == folder


def test_a_new_run_is_refused_in_a_folder_with_another_runs_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0
    before = load_file(out / "model.safetensors")
    capsys.readouterr()
    assert main([write(tmp_path), f"training.output_dir={out}", "training.learning_rate=1.0e-3"]) == 2
    line = one_error_line(capsys)
    assert "of another run" in line and "checkpoint-20" in line and "overwrite_output_dir=true" in line
    # the same run, killed before its end and started again without resuming, is refused too (its
    # checkpoints would be mixed with the new ones)
    (out / "model.safetensors").rename(tmp_path / "model.safetensors")
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 2
    assert "of this same run" in one_error_line(capsys)
    (tmp_path / "model.safetensors").rename(out / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert all((before[name] == after[name]).all() for name in before)  # nothing was touched

    assert main([write(tmp_path), f"training.output_dir={out}", "training.learning_rate=1.0e-3",
                 "training.overwrite_output_dir=true"]) == 0
    assert RunIdentity.read(out / "checkpoint-20").recipe["training.learning_rate"] == 1.0e-3


def test_resume_refuses_another_runs_checkpoint_and_names_what_differs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0
    capsys.readouterr()
    for override, named in [("training.learning_rate=1.0e-3", "training.learning_rate 0.003 -> 0.001"),
                            ("task.seed=5", "task.seed 0 -> 5")]:
        assert main([write(tmp_path), f"training.output_dir={out}", override,
                     "training.resume_from_checkpoint=true"]) == 2
        line = one_error_line(capsys)
        assert "belongs to another run" in line and named in line
        if override.startswith("task"):
            assert "the training rows" in line  # another seed: other data


def test_a_checkpoint_without_identity_is_not_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0
    (out / "checkpoint-20" / "mft_run.json").unlink()
    capsys.readouterr()
    assert main([write(tmp_path), f"training.output_dir={out}", "training.resume_from_checkpoint=true"]) == 2
    assert "carries no run identity" in one_error_line(capsys)


def test_a_resumed_from_scratch_run_takes_its_tokenizer_from_the_checkpoint(tmp_path, monkeypatch):
    import mft.train

    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0
    built = []
    real = mft.data.tokenize.build_word_tokenizer
    monkeypatch.setattr(mft.data.tokenize, "build_word_tokenizer", lambda *a, **k: built.append(1) or real(*a, **k))
    assert main([write(tmp_path), f"training.output_dir={out}",
                 f"training.resume_from_checkpoint={out / 'checkpoint-10'}"]) == 0
    assert built == []  # the vocabulary came from checkpoint-10, not from the data again
    assert (out / "checkpoint-20").is_dir()


def test_a_second_process_cannot_use_a_running_runs_folder(tmp_path):
    out = tmp_path / "run"
    recipe = write(tmp_path, tiny_recipe(max_steps=20, save_strategy="no"))
    hold = tmp_path / "hold"
    hold.touch()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", HELD_RUN, str(hold), "0", recipe, f"training.output_dir={out}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "hold.reached").is_file():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "mft.train", recipe, f"training.output_dir={out}"],
                                capture_output=True, text=True, env=env, timeout=300)
        assert first.poll() is None, "the first run ended before the second one started"
    finally:
        hold.unlink()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another run" in lines[0] and f"process {first.pid}" in lines[0]
    assert first.wait(timeout=300) == 0
    assert not (out / LOCK_FILE).exists()  # released at the end


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                             "started": "2026-01-01T00:00:00"}))
    with OutputFolderLock(out) as lock:
        assert "no longer exists" in lock.note
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-host", "started": "x"}))
    with pytest.raises(Exception, match=f"delete {out / LOCK_FILE}"):
        OutputFolderLock(out).__enter__()


def test_ctrl_c_prints_one_line_with_the_command_that_resumes(tmp_path):
    import signal

    out = tmp_path / "run"
    recipe = write(tmp_path, tiny_recipe(max_steps=60, save_strategy="steps", save_steps=10))
    hold = tmp_path / "hold"
    hold.touch()  # the run waits after step 10 until the interrupt reaches it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", HELD_RUN, str(hold), "10", recipe, f"training.output_dir={out}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not (tmp_path / "hold.reached").is_file():  # checkpoint-10 written, the run held after it
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Ctrl-C did not end the run in 120 s; its stacks:\n{stacks_of(process)}")
    assert process.returncode == 130
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("mft: interrupted while training") and "training.resume_from_checkpoint=true" in line
    assert not (out / LOCK_FILE).exists()
    command = line.split("resume with: ", 1)[1].split()
    assert main(command[3:]) == 0  # the printed command resumes the run to its end
    assert (out / "checkpoint-60").is_dir()


def test_resuming_a_finished_run_does_nothing_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    capsys.readouterr()
    assert main([write(tmp_path), f"training.output_dir={out}", "training.resume_from_checkpoint=true"]) == 0
    assert "is a finished run of this recipe (step 20 of 20); nothing to do" in capsys.readouterr().out
    after = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert after == before  # no step past max_steps, no new checkpoint, nothing rewritten
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0  # the same command again: the same answer
    assert "nothing to do" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before


@pytest.mark.parametrize("damage, named", [
    (lambda folder: (folder / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    (lambda folder: (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-100]),
     "model.safetensors is damaged"),
    (lambda folder: (folder / "optimizer.pt").write_bytes((folder / "optimizer.pt").read_bytes()[:200]),
     "optimizer.pt is damaged"),
])
def test_a_damaged_checkpoint_names_the_previous_complete_one(tmp_path, capsys, damage, named):
    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0
    for name in ("config.json", "model.safetensors"):  # as if killed before the end
        (out / name).unlink()
    damage(out / "checkpoint-20")
    capsys.readouterr()
    assert main([write(tmp_path), f"training.output_dir={out}", "training.resume_from_checkpoint=true"]) == 2
    line = one_error_line(capsys)
    assert named in line and f"training.resume_from_checkpoint={out / 'checkpoint-10'}" in line


def test_a_full_disk_while_saving_says_so_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    import errno

    from transformers import Trainer

    real = Trainer._save_checkpoint

    def full_at_step_20(self, model, trial):
        if self.state.global_step == 20:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
        return real(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", full_at_step_20)
    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # (above it: the first checkpoint's progress bar)
    assert line.startswith("mft: error: the disk is full")
    assert "the disk is full" in line and "checkpoint-20" in line and "checkpoint-10 is intact" in line
    assert RunIdentity.read(out / "checkpoint-10") is not None and not (out / ".checkpoint-staging").exists()
    from mft.checkpoints import _disk_full

    assert _disk_full(OSError(errno.ENOSPC, "No space left on device")) and not _disk_full(OSError(errno.EACCES, "x"))


def test_after_a_resume_the_report_covers_the_whole_run(tmp_path):
    from mft.checkpoints import read_train_seconds

    out = tmp_path / "run"
    recipe = write(tmp_path, tiny_recipe(max_steps=20, save_strategy="steps", save_steps=10, save_total_limit=2))
    assert main([recipe, f"training.output_dir={out}"]) == 0
    whole = (out / "report.md").read_text()
    seconds_at_10 = read_train_seconds(str(out / "checkpoint-10"))
    assert 0 < seconds_at_10 <= read_train_seconds(str(out / "checkpoint-20"))
    for name in ("config.json", "model.safetensors"):  # as if killed after checkpoint-10 was written
        (out / name).unlink()
    import shutil

    shutil.rmtree(out / "checkpoint-20")
    (out / "checkpoint-10" / "mft_progress.json").write_text(json.dumps({"train_seconds": 1000.0}))  # a long first part
    assert main([recipe, f"training.output_dir={out}", "training.resume_from_checkpoint=true"]) == 0
    resumed = (out / "report.md").read_text()

    def row(report: str, name: str) -> str:
        return next(line for line in report.splitlines() if line.startswith(f"| {name} |")).split("|")[2].strip()

    assert row(resumed, "train loss") == row(whole, "train loss")  # the same 20 steps' losses
    assert 1000 <= float(row(resumed, "train seconds")) < 1000 + 120  # the time before the kill is counted
    assert read_train_seconds(str(out / "checkpoint-20")) >= 1000


def test_mft_eval_of_a_killed_runs_latest_checkpoint_works(tmp_path, capsys):
    from mft import cli
    from mft.data import RetrievalTask, write_jsonl

    out = tmp_path / "run"
    assert main([write(tmp_path), f"training.output_dir={out}"]) == 0
    for name in ("config.json", "model.safetensors"):  # as if killed after its last checkpoint
        (out / name).unlink()
    qa = tmp_path / "qa.jsonl"
    write_jsonl(qa, RetrievalTask(num_pairs=24, tokens_per_entity=2, query_fraction=0.5, seed=0).build().qa)
    capsys.readouterr()
    assert cli.main(["eval", str(out), "--qa", str(qa)]) == 2
    line = one_error_line(capsys)
    assert "not a finished run" in line and f"mft eval {out / 'checkpoint-20'}" in line
    assert cli.main(["eval", str(out / "checkpoint-20"), "--qa", str(qa), "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["forward"]["n"] > 0
