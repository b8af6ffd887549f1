"""benchmarks/document_recall.py: the cloze rows hide exactly the asked tokens, and each row's score
is the log-probability of its own answer tokens, whatever the batch around it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mft.data import build_word_tokenizer
from mft.models.attention import attention_mask_4d

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("document_recall", ROOT / "benchmarks" / "document_recall.py")
document_recall = importlib.util.module_from_spec(spec)
spec.loader.exec_module(document_recall)

WORDS = [f"w{i}" for i in range(30)]
RULES = {"shift": True, "keep_sink": True, "attend_to_masked": False, "prompt_sees_answer": True}


def span_of(text: str, word: str) -> tuple[int, int]:
    start = text.index(f" {word} ") + 1 if f" {word} " in text else text.index(word)
    return start, start + len(word)


def test_cloze_rows_hide_the_answer_and_the_hidden_spans_only():
    tokenizer = build_word_tokenizer([" ".join(WORDS)])
    text = "w1 w2 w3 w4 w5 w6"
    inputs, ids, answer, masked = document_recall.cloze_rows(tokenizer, text, span_of(text, "w3"), [span_of(text, "w5")])
    words = tokenizer.convert_ids_to_tokens(ids)
    assert words[answer[0]] == "w3" and len(answer) == 1
    assert {words[i] for i in masked} == {"w3", "w5"}
    assert ids[-1] == tokenizer.eos_token_id and ids[0] == tokenizer.bos_token_id  # the rows training builds
    for i, (shown, original) in enumerate(zip(inputs, ids)):
        assert shown == (tokenizer.mask_token_id if i in masked else original)


def test_each_score_is_its_own_answer_log_probability_in_a_mixed_batch(monkeypatch):
    tokenizer = build_word_tokenizer([" ".join(WORDS)])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.config._attn_implementation = "eager"
    texts = [("w1 w2 w3 w4", "w2", []), ("w5 w6 w7 w8 w9 w10 w11", "w9 w10", ["w6"]), ("w12 w13 w14", "w14", [])]
    rows = [document_recall.cloze_rows(tokenizer, text, span_of(text, answer), [span_of(text, h) for h in hidden])
            for text, answer, hidden in texts]
    monkeypatch.setattr(document_recall, "BATCH", 2)  # one batch of two rows of unequal length, then one row
    scores = document_recall.score_rows(model, tokenizer, RULES, rows)

    for (inputs, ids, answer, masked), score in zip(rows, scores):
        length = len(inputs)
        hidden = torch.zeros(1, length, dtype=torch.bool)
        hidden[0, sorted(masked)] = True
        allowed = attention_mask_4d(torch.ones(1, length, dtype=torch.bool), torch.zeros(1, dtype=torch.bool), hidden,
                                    torch.ones(1, dtype=torch.bool))
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        with torch.no_grad():
            log_probs = model(input_ids=torch.tensor([inputs]), attention_mask=bias).logits[0].log_softmax(-1)
        expected = sum(log_probs[i - 1, ids[i]].item() for i in answer)  # shift: position i-1 predicts token i
        assert abs(score - expected) < 1e-4
    assert len({round(s, 4) for s in scores}) == 3
