"""flex_attention (issue 20): every mask mft builds comes from one per-token rule (`TokenRule`), as a
dense [B, 1, L, L] mask for eager/sdpa or as a flex_attention block mask; the two give the same
logits on tiny Llama, Mistral and Qwen2 models. On CPU PyTorch runs flex_attention forward only
(no backward), so the gradient equality is checked by `benchmarks/gpu_check.sh` on a GPU, whose
CPU dry run is run here too."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from mft.errors import RecipeError
from mft.models.attention import TokenRule, anneal_to_bidirectional, future_kept

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_every_mask_kind_gives_the_same_logits_under_flex_and_dense_attention():
    results = gpu_check.compare_masks("cpu", backward=False)
    assert {row["family"] for row in results} == {"llama", "mistral", "qwen2"}
    assert len(results) == 3 * len(gpu_check.MASK_CASES)
    for row in results:
        assert row["predicted"] > 0
        assert row["logit_max_diff"] < 1e-4, row


def test_the_rule_states_each_mask_kind():
    """The rule itself, on a hand-made batch: padding, causal and bidirectional rows, hidden keys,
    the sink, packing (segments) and the block-causal prompt."""
    L = 6
    valid = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    segment = torch.tensor([[0] * 6, [0, 0, 0, 1, 1, 1]])
    causal = torch.tensor([[False] * 6, [True] * 3 + [False] * 3])
    hidden = torch.tensor([[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]], dtype=torch.bool)
    sink = torch.tensor([[1, 0, 0, 0, 0, 0], [0] * 6], dtype=torch.bool)
    prompt = torch.tensor([[0] * 6, [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    mask = TokenRule(valid, segment, causal, hidden, sink, prompt).dense()[:, 0]
    eye = torch.eye(L, dtype=torch.bool)
    # row 0: bidirectional, key 2 hidden, key 5 padding, query 0 the sink
    expected0 = torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool)[None].expand(L, L).clone()
    expected0[0] = False
    assert torch.equal(mask[0], expected0 | eye)
    # row 1: a causal example (0-2) then a bidirectional one (3-5) whose prompt is position 3
    expected1 = torch.zeros(L, L, dtype=torch.bool)
    expected1[:3, :3] = torch.ones(3, 3, dtype=torch.bool).tril()
    expected1[3:, 3:] = torch.tensor([[1, 0, 0], [1, 0, 1], [1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask[1], expected1 | eye)


def test_annealing_draws_alike_in_both_forms_and_keeps_the_expected_fraction():
    index = torch.arange(256)
    draws = future_kept(index[:, None], index[None, :], seed=7)
    assert 0.0 <= draws.min() and draws.max() < 1.0
    assert abs((draws < 0.3).double().mean().item() - 0.3) < 0.01
    assert not torch.equal(draws, future_kept(index[:, None], index[None, :], seed=8))
    full = torch.ones(2, 1, 256, 256, dtype=torch.bool)
    rule = TokenRule(torch.ones(2, 256, dtype=torch.bool), torch.zeros(2, 256, dtype=torch.long),
                     torch.zeros(2, 256, dtype=torch.bool), torch.zeros(2, 256, dtype=torch.bool),
                     torch.zeros(2, 256, dtype=torch.bool), torch.zeros(2, 256, dtype=torch.bool), anneal=(0.3, 7))
    assert torch.equal(rule.dense(), anneal_to_bidirectional(full, 0.3, 7))


def test_the_block_mask_is_never_a_full_mask():
    """At 4096 tokens the block mask holds block indices, not a [B, 1, L, L] tensor."""
    length = 4096
    rule = TokenRule(torch.ones(1, length, dtype=torch.bool), torch.zeros(1, length, dtype=torch.long),
                     torch.zeros(1, length, dtype=torch.bool), torch.rand(1, length) < 0.5,
                     torch.zeros(1, length, dtype=torch.bool), torch.zeros(1, length, dtype=torch.bool))
    block_mask = rule.block_mask()
    stored = sum(t.numel() for t in block_mask.as_tuple() if isinstance(t, torch.Tensor))
    assert block_mask.shape[-2:] == (length, length)
    assert stored < length * length / 1000


def test_flex_attention_training_on_cpu_is_refused_in_one_line(tmp_path, capsys):
    import mft.train

    assert mft.train.main([str(ROOT / "recipes" / "quickstart.yaml"), "model.attn_implementation=flex_attention",
                           f"training.output_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "flex_attention trains only on a GPU" in error[0]
    assert not (tmp_path / "run").exists()


def test_rows_with_their_own_masks_have_no_rule():
    from mft import MFTCollator
    from mft.data import build_word_tokenizer
    from mft.objectives import build_objective

    tokenizer = build_word_tokenizer(["w0 w1 w2 w3 w4"])
    collator = MFTCollator(build_objective("plm"), tokenizer, seed=0, attention="rule")
    with pytest.raises(RecipeError, match="use model.attn_implementation: sdpa"):
        collator([{"input_ids": tokenizer("w0 w1 w2")["input_ids"], "prompt_length": 0}])


def test_the_gpu_check_dry_runs_on_cpu(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path),
                           "--parts", "loss,steps,recipes"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = [row for row in summary["results"] if row["part"] == "steps"]
    assert {(row["implementation"], row["objective"]) for row in steps} == {
        (implementation, objective) for implementation in ("sdpa", "flex_attention")
        for objective in ("ar", "mlm_u", "masked_reconstruct")}
    assert all(row["tokens_per_s"] > 0 for row in steps if row["implementation"] == "sdpa")
    assert {row["kernel"]: row["skipped"] for row in summary["results"] if row["part"] == "loss"} == {
        "cce": "GPU only", "liger": "GPU only"}
    [recipe] = [row for row in summary["results"] if row["part"] == "recipes"]
    assert recipe["returncode"] == 0
    assert "| part | what | result |" in done.stdout
