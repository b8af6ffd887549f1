"""Drop-in use: an ordinary transformers `Trainer` script and an ordinary TRL `SFTTrainer` script
gain MLM-U with a few lines (examples/), and `MFTLossMixin` on SFTTrainer is the same objective as
`MFTTrainer`: same batch, same loss, same exact normalisation under gradient accumulation."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTConfig

from mft import MFTCollator, MFTConfig, MFTTrainer, MLMU, QASet
from mft.data import RetrievalTask, TokenizedDataset, build_word_tokenizer, encode_row, row_texts
from mft.objectives import IGNORE
from mft import SFTRowsCollator

ROOT = Path(__file__).resolve().parents[1]
TASK = RetrievalTask(num_pairs=8, tokens_per_entity=2, query_fraction=0.5, seed=3)
SUBPROCESS_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}  # see conftest


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trl_example = load_example("trl_sft_masked")


@pytest.fixture(autouse=True)
def no_telemetry(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)


@pytest.mark.parametrize("script", ["hf_trainer_masked.py", "trl_sft_masked.py"])
def test_example_script_runs(script, tmp_path):
    result = subprocess.run([sys.executable, f"examples/{script}", "--max-steps", "2", "--output-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **SUBPROCESS_ENV})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "decoding: masked" in lines
    metrics = [re.fullmatch(r"(forward|backward): exact match (\d\.\d{3}) \(n=40\)", line) for line in lines]
    metrics = [m for m in metrics if m]
    assert [m.group(1) for m in metrics] == ["forward", "backward"], result.stdout[-2000:]
    assert all(0.0 <= float(m.group(2)) <= 1.0 for m in metrics)


# -- the same objective in process -----------------------------------------------------------------

def tiny_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))


def task():
    data = TASK.build()
    tokenizer = build_word_tokenizer([t for row in data.train + data.qa for t in row_texts(row)])
    return data, tokenizer


COMMON = dict(max_steps=1, per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1, save_strategy="no",
              report_to="none", use_cpu=True, seed=0, disable_tqdm=True)


def sft_trainer(tmp_path, data, tokenizer, objective=None, **args):
    """The example's MaskedSFTTrainer, built as the example builds it (SFTTrainer tokenizes the rows)."""
    config = SFTConfig(output_dir=str(tmp_path), bf16=False, **{**COMMON, **args})
    return trl_example.MaskedSFTTrainer(
        model=tiny_model(tokenizer), args=config, train_dataset=Dataset.from_list(trl_example.sft_rows(data.train)),
        processing_class=tokenizer,
        data_collator=SFTRowsCollator(objective or MLMU(weighting="1/r"), tokenizer, seed=0))


def test_sft_rows_are_mft_examples(tmp_path):
    """SFTTrainer's tokenization of the prompt/completion rows gives mft's token ids, and the prompt
    length read off its labels is mft's (a statement's "prompt" is its BOS, which is never masked)."""
    data, tokenizer = task()
    trainer = sft_trainer(tmp_path, data, tokenizer, objective=MLMU(predict_prompt=False))
    assert len(trainer.train_dataset) == len(data.train)
    examples = [SFTRowsCollator.example(row) for row in trainer.train_dataset]
    for row, example in zip(data.train, examples):
        expected = encode_row(tokenizer, row)
        assert example["input_ids"] == expected["input_ids"]
        assert example["prompt_length"] == (expected["prompt_length"] if "prompt" in row else 1)
    # predict_prompt=False: no prompt token is ever a target
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data.train))])
    for example, labels in zip(examples, batch["labels"]):
        assert (labels[: example["prompt_length"]] == IGNORE).all()
        assert (labels != IGNORE).any()


def test_masked_sft_trainer_computes_mfttrainers_loss(tmp_path):
    data, tokenizer = task()
    sft = sft_trainer(tmp_path / "sft", data, tokenizer)
    mft = MFTTrainer(model=tiny_model(tokenizer), args=MFTConfig(output_dir=str(tmp_path / "mft"), **COMMON),
                     train_dataset=TokenizedDataset.from_rows(tokenizer, data.train),
                     data_collator=MFTCollator(MLMU(weighting="1/r"), tokenizer, seed=0), processing_class=tokenizer)
    indices = range(6)
    # The same examples through either data path give the same batch (same masks, same weights) ...
    batch = mft.data_collator([mft.train_dataset[i] for i in indices])
    sft_batch = sft.data_collator([{**sft.train_dataset[i], "example_index": i, "epoch": 0} for i in indices])
    assert batch.keys() == sft_batch.keys()
    assert all(torch.equal(batch[key], sft_batch[key]) for key in batch)
    assert len(set(batch["loss_weights"][batch["loss_weights"] > 0].tolist())) > 1  # really unequal weights
    # ... and the same loss, also with a micro-batch's share of a larger step.
    for total in (None, batch["loss_weights"].sum() * 3):
        expected = mft.compute_loss(mft.model, dict(batch), num_items_in_batch=total)
        got = sft.compute_loss(sft.model, dict(batch), num_items_in_batch=total)
        assert abs(got.item() - expected.item()) < 1e-6, (total, got, expected)
    # QA evaluation goes through the mixin too (SFTTrainer's own evaluate would try to tokenize it).
    metrics = sft.evaluate(QASet(data.qa))
    assert all(0.0 <= metrics[f"eval_{direction}_exact_match"] <= 1.0 for direction in ("forward", "backward"))


def test_masked_sft_trainer_gradient_accumulation_equals_one_big_batch(tmp_path):
    """One SGD step on 4 examples: batch 4 and 2 x 2 micro-batches give the same update, and it is
    minus the gradient of the documented loss sum_i w_i CE_i / sum_i w_i over the 4 examples."""
    data, tokenizer = task()
    common = dict(optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0)
    updates, losses = {}, {}
    for batch_size, accumulation in [(4, 1), (2, 2)]:
        trainer = sft_trainer(tmp_path / f"b{batch_size}", data, tokenizer, per_device_train_batch_size=batch_size,
                              gradient_accumulation_steps=accumulation, **common)
        before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
        trainer.train()
        updates[batch_size] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]) - before
        losses[batch_size] = trainer.state.log_history[0]["loss"]
    assert updates[4].abs().max() > 1e-4
    assert torch.allclose(updates[2], updates[4], atol=1e-6)
    assert abs(losses[2] - losses[4]) < 1e-5

    # The first batch again, from a fresh collator (the rows carry no example index, so masks come
    # from the collator's seeded stream), and the gradient of the documented loss on it.
    trainer = sft_trainer(tmp_path / "manual", data, tokenizer, **common)
    order = next(iter(trainer.get_train_dataloader().batch_sampler))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in order])
    weights, labels = batch.pop("loss_weights"), batch.pop("labels")
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    selected = labels != IGNORE
    token_loss = torch.nn.functional.cross_entropy(logits[selected], labels[selected], reduction="none")
    loss = (token_loss * weights[selected]).sum() / weights.sum()
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    assert torch.allclose(-gradient, updates[4], atol=1e-6)
    assert abs(loss.item() - losses[4]) < 1e-5
