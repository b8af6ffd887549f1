"""Two processes on CPU: DDP (gloo) and DeepSpeed ZeRO-2 train the tiny recipe and match one process
with the same global batch; ZeRO-3 trains and saves a consolidated model that reloads in one process.

Launched with torchrun, as a cluster job would be, and with `accelerate launch` and the shipped
two-process CPU config. Every example's mask is drawn from (seed, epoch, example index), so the two ranks
draw different masks for their different examples, and the same masks as the single process does.
Tolerance: the gradients are summed in another order across processes (and by DeepSpeed in its own
buckets), so the losses agree to 1e-4 and the weights to 1e-4, not bit for bit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_resume import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = tiny_recipe(max_steps=12, lr_scheduler_type="constant", save_strategy="no")
TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp_path: Path, name: str, processes: int, *overrides: str, launcher: str = "torchrun"
        ) -> tuple[list[float], dict[str, torch.Tensor], str]:
    """(the loss of every step, the final weights, what the run printed)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    output = tmp_path / name
    args = [str(recipe), f"training.output_dir={output}", *overrides]
    if processes == 1:
        command = [sys.executable, "-m", "mft.train", *args]
    elif launcher == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "accelerate_configs" / "cpu_two_processes.yaml"), "--main_process_port", str(free_port()),
                   "-m", "mft.train", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "mft.train", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return losses, load_file(output / "model.safetensors"), done.stdout


def assert_same_run(single, multi):
    (single_losses, single_weights, _), (multi_losses, multi_weights, _) = single, multi
    assert len(multi_losses) == len(single_losses) == 12
    assert multi_losses[-1] < multi_losses[0]  # it trains
    assert multi_losses == pytest.approx(single_losses, abs=TOLERANCE)
    assert multi_weights.keys() == single_weights.keys()
    for name, tensor in single_weights.items():
        assert torch.allclose(multi_weights[name], tensor, atol=TOLERANCE), name


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """One process, batch 8: the reference for two processes with 4 each."""
    return run(tmp_path_factory.mktemp("single"), "single", 1)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_process_ddp_matches_one_process(tmp_path, single_process, launcher):
    multi = run(tmp_path, "ddp", 2, "training.per_device_train_batch_size=4", launcher=launcher)
    assert "; 2 processes" in multi[2] and "; 1 process" in single_process[2]
    assert_same_run(single_process, multi)


def test_two_process_deepspeed_zero2_matches_one_process(tmp_path, single_process):
    config = ROOT / "accelerate_configs" / "deepspeed" / "zero2.json"
    multi = run(tmp_path, "zero2", 2, "training.per_device_train_batch_size=4", f"training.deepspeed={config}")
    assert "; 2 processes" in multi[2]
    assert_same_run(single_process, multi)


def test_two_process_deepspeed_zero3_saves_a_model_that_reloads_in_one_process(tmp_path):
    """ZeRO-3 partitions the parameters from their creation (so its random start differs from one
    process's): it must train, and its saved model must be whole and answer as the run did."""
    from mft.eval import evaluate_qa
    from mft.models import load_trained

    config = ROOT / "accelerate_configs" / "deepspeed" / "zero3.json"
    losses, weights, printed = run(tmp_path, "zero3", 2, "training.per_device_train_batch_size=4",
                                   f"training.deepspeed={config}")
    assert "; 2 processes" in printed and "trainable parameters 0 " not in printed
    assert losses[-1] < losses[0]
    assert all(tensor.numel() > 0 for tensor in weights.values())  # consolidated, not the empty partitions
    model, tokenizer = load_trained(tmp_path / "zero3")
    run_answers = [json.loads(line) for line in (tmp_path / "zero3" / "predictions.jsonl").read_text().splitlines()]
    qa = [{key: row[key] for key in ("question", "answer", "direction")} for row in run_answers]
    reloaded = []
    evaluate_qa(model, tokenizer, qa, "masked", max_new_tokens=16, predictions=reloaded)
    assert any(row["prediction"] for row in run_answers)
    assert [row["prediction"] for row in reloaded] == [row["prediction"] for row in run_answers]


def component_losses(output: Path) -> list[dict[str, float]]:
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    return [{key: value for key, value in entry.items() if key.startswith("loss_")} for entry in history
            if "loss" in entry]


def test_component_losses_cover_every_process(tmp_path):
    """A mixture's loss_ar / loss_mlm_u are each component's weighted mean over the whole step, all
    processes together (they were rank 0's alone), summed on each process and gathered at log time."""
    mixture = ["objective.name=mixture", "objective.mix={ar: 0.5, mlm_u: 0.5}"]
    run(tmp_path, "mix_single", 1, *mixture)
    run(tmp_path, "mix_ddp", 2, *mixture, "training.per_device_train_batch_size=4")
    single, multi = component_losses(tmp_path / "mix_single"), component_losses(tmp_path / "mix_ddp")
    assert len(single) == len(multi) == 12 and all(set(step) == {"loss_ar", "loss_mlm_u"} for step in single)
    for one, two in zip(single, multi):
        assert two == pytest.approx(one, abs=TOLERANCE)
