"""Crash and resume: a run killed with SIGKILL resumes from its last checkpoint and ends exactly where
an uninterrupted run ends; a checkpoint interrupted while being written is never picked up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from mft.train import main

from test_trainer import make_trainer



def tiny_recipe(**training) -> str:
    """A from-scratch MLM-U recipe that trains in seconds (also used by test_distributed), with
    `training` options on top of its own."""
    options = dict(max_steps=60, per_device_train_batch_size=8, learning_rate=3.0e-3, logging_steps=1,
                   eval_strategy="no", seed=0, use_cpu=True, report_to="none", disable_tqdm=True)
    options.update(training)
    return yaml.safe_dump({
        "task": {"name": "retrieval", "num_pairs": 24, "tokens_per_entity": 2, "query_fraction": 0.5, "seed": 0},
        "model": {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 64, "max_position_embeddings": 32},
        "objective": {"name": "mlm_u", "weighting": "1/r"},
        "training": options,
    })


RECIPE = tiny_recipe(save_strategy="steps", save_steps=10, save_total_limit=2)

# A training run through `mft.train` (the training itself untouched) whose steps from
# `hold_from_step` on wait while the file `hold` exists, and which writes `hold`.reached once it
# waits (after every save of the steps before it has ended): the test decides when it may go on, so
# a fast machine cannot end it before the test acts on it. A test that fails before releasing it
# leaves no process behind: the wait gives up after 10 minutes.
# Ctrl-C reaches it as it reaches a terminal's foreground job: a test suite started as a background
# job of a non-interactive shell (`bash .ci/run &`) inherits SIGINT ignored, and Python then raises
# no KeyboardInterrupt. SIGUSR1 prints every thread's stack (`stacks_of`).
# Arguments: hold, hold_from_step, then mft.train's own.
def stacks_of(process: subprocess.Popen) -> str:
    """Stop a HELD_RUN process that hangs, and return its stderr with every thread's stack."""
    process.send_signal(signal.SIGUSR1)
    time.sleep(2)
    process.kill()
    return process.communicate()[1][-4000:]


HELD_RUN = textwrap.dedent("""
    import faulthandler, os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a test that times out asks where it hangs
    from mft.trainer import MFTTrainer
    hold, hold_from_step = sys.argv[1], int(sys.argv[2])
    give_up = time.time() + 600
    step = MFTTrainer.training_step
    def held_step(self, *args, **kwargs):
        while self.state.global_step >= hold_from_step and os.path.exists(hold) and time.time() < give_up:
            open(hold + ".reached", "w").close()
            time.sleep(0.05)
        return step(self, *args, **kwargs)
    MFTTrainer.training_step = held_step
    from mft.train import main
    sys.exit(main(sys.argv[3:]))
""")


def final_state(output_dir: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    """(the loss logged at every step, the final weights)."""
    state = json.loads((output_dir / "checkpoint-60" / "trainer_state.json").read_text())
    losses = {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}
    return [losses[step] for step in sorted(losses)], load_file(output_dir / "model.safetensors")


def test_a_run_killed_with_sigkill_resumes_to_the_same_end(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main([str(recipe), f"training.output_dir={straight}"]) == 0

    hold = tmp_path / "hold"
    hold.touch()
    process = subprocess.Popen([sys.executable, "-c", HELD_RUN, str(hold), "20", str(recipe),
                                f"training.output_dir={killed}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    deadline = time.time() + 300
    while not (tmp_path / "hold.reached").is_file():  # two checkpoints written, the run held after them
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "the run never reached step 20"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoint-60").exists() and not (killed / "model.safetensors").exists()
    interrupted_at = int(Path(get_last_checkpoint(str(killed))).name.split("-")[1])
    assert interrupted_at == 20

    assert main([str(recipe), f"training.output_dir={killed}", "training.resume_from_checkpoint=true"]) == 0
    straight_losses, straight_weights = final_state(straight)
    resumed_losses, resumed_weights = final_state(killed)
    assert len(resumed_losses) == len(straight_losses) == 60
    # the steps after the checkpoint: same data order, same mask draws, same updates
    assert resumed_losses[interrupted_at:] == pytest.approx(straight_losses[interrupted_at:], abs=1e-6)
    assert straight_weights.keys() == resumed_weights.keys()
    for name, tensor in straight_weights.items():
        assert torch.allclose(resumed_weights[name], tensor, atol=1e-6), name


def test_resume_true_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe(max_steps=4, save_strategy="steps", save_steps=10))
    assert main([str(recipe), f"training.output_dir={tmp_path / 'run'}", "training.resume_from_checkpoint=true"]) == 0
    assert "no checkpoint in" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_resume_from_a_folder_that_is_no_checkpoint_is_refused_before_training(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    code = main([str(recipe), f"training.output_dir={tmp_path / 'run'}",
                 f"training.resume_from_checkpoint={tmp_path / 'nowhere'}"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "training.resume_from_checkpoint" in error and "not a checkpoint folder" in error and "\n" not in error
    assert not (tmp_path / "run" / "resolved_recipe.yaml").exists()


class KilledWhileSaving(Exception):
    pass


def test_a_checkpoint_interrupted_while_saving_is_never_picked_up(tmp_path, monkeypatch):
    """The save of checkpoint-4 dies after the weights and optimizer are written (as a kill would):
    checkpoint-2 stays the last checkpoint, and a resume from it completes the run."""
    output = tmp_path / "run"
    trainer = make_trainer(output, max_steps=6, save_strategy="steps", save_steps=2)
    save_rng_state = type(trainer)._save_rng_state

    def dies_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise KilledWhileSaving
        save_rng_state(self, output_dir)

    monkeypatch.setattr(type(trainer), "_save_rng_state", dies_at_step_4)
    with pytest.raises(KilledWhileSaving):
        trainer.train()
    assert (output / ".checkpoint-staging" / "checkpoint-4" / "model.safetensors").is_file()  # half written
    assert not (output / "checkpoint-4").exists()
    assert get_last_checkpoint(str(output)) == str(output / "checkpoint-2")

    monkeypatch.undo()
    resumed = make_trainer(output, max_steps=6, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    assert sorted(p.name for p in output.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert not (output / ".checkpoint-staging").exists()
