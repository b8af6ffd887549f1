"""Greedy generation (mft.decoding) against hand-written loops, and exact match (mft.eval)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import mft.eval
from mft.data import build_word_tokenizer, encode_prompt
from mft.decoding import generate, generate_causal, generate_masked, generate_masked_any_order

WORDS = [f"w{i}" for i in range(40)]
QUESTIONS = ["w1", "w2 w3 w4", "w5 w6", "w7 w8 w9 w10 w11 w12", "w13 w14 w15 w16"]




@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer([" ".join(WORDS)])


def make_model(tokenizer, attn_implementation="eager", seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = attn_implementation
    # larger output weights: well-separated logits, so argmax does not hinge on rounding
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 1.0)
    return model.eval()


def prompts_of(tokenizer, questions=QUESTIONS):
    return [encode_prompt(tokenizer, q) for q in questions]


def swap_output_rows(model, a: int, b: int) -> None:
    """Exchange the output-layer rows of tokens a and b: the model now predicts a where it predicted b."""
    with torch.no_grad():
        weight = model.lm_head.weight
        weight[[a, b]] = weight[[b, a]].clone()


# ---------------------------------------------------------------------------------------------
# reference loops


@torch.no_grad()
def greedy_causal_reference(model, prompt: list[int], eos: int, max_new_tokens: int) -> list[int]:
    ids = list(prompt)
    answer = []
    for _ in range(max_new_tokens):
        token = int(model(torch.tensor([ids])).logits[:, -1].argmax(-1))
        if token == eos:
            break
        ids.append(token)
        answer.append(token)
    return answer


@torch.no_grad()
def greedy_masked_reference(model, tokenizer, prompt: list[int], max_new_tokens: int, shift: bool = False,
                            keep_sink: bool = False) -> list[int]:
    eos = tokenizer.eos_token_id
    banned = [i for i in tokenizer.all_special_ids if i != eos]
    ids = list(prompt)
    answer = []
    for _ in range(max_new_tokens):
        row = ids + [tokenizer.mask_token_id]
        length = len(row)
        allowed = torch.zeros(length, length, dtype=torch.bool)
        allowed[:, : length - 1] = True         # every position sees every real token
        allowed[length - 1, length - 1] = True  # the slot also sees itself; nobody else sees it
        if keep_sink:  # the first position sees itself alone
            allowed[0, 1:] = False
        mask = torch.zeros(1, 1, length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)
        # shift: the logits one position left of the slot predict it
        logits = model(input_ids=torch.tensor([row]), attention_mask=mask).logits[0, -1 - int(shift)].clone()
        logits[banned] = float("-inf")
        token = int(logits.argmax())
        if token == eos:
            break
        ids.append(token)
        answer.append(token)
    return answer


def model_with_a_long_answer(tokenizer, reference, max_new_tokens):
    """(model, prompt index, k, free answers): the first seed whose greedy answer to some prompt has
    max_new_tokens tokens and a token at k >= 1 that did not occur before it."""
    prompts = prompts_of(tokenizer)
    for seed in range(20):
        model = make_model(tokenizer, seed=seed)
        free = [reference(model, p) for p in prompts]
        for index, answer in enumerate(free):
            k = first_new_token_index(answer)
            if len(answer) == max_new_tokens and k > 0:
                return model, index, k, free
    raise AssertionError("no seed gives a usable answer")


def first_new_token_index(sequence: list[int]) -> int:
    """The first index k >= 1 whose token did not occur before it (or -1)."""
    for k in range(1, len(sequence)):
        if sequence[k] not in sequence[:k]:
            return k
    return -1


# ---------------------------------------------------------------------------------------------
# causal


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_generate_causal_matches_greedy_loop(tokenizer, attn_implementation):
    model = make_model(tokenizer, attn_implementation)
    prompts = prompts_of(tokenizer)
    assert len({len(p) for p in prompts}) > 1
    expected = [greedy_causal_reference(model, p, tokenizer.eos_token_id, 6) for p in prompts]
    assert generate_causal(model, tokenizer, prompts, max_new_tokens=6) == expected
    # one at a time gives the same, and so does the batching wrapper
    assert [generate_causal(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts] == expected
    assert generate(model, tokenizer, prompts, "causal", max_new_tokens=6, batch_size=2) == expected


def test_generate_causal_stops_at_eos(tokenizer):
    prompts = prompts_of(tokenizer)
    model, index, k, free = model_with_a_long_answer(
        tokenizer, lambda m, p: greedy_causal_reference(m, p, tokenizer.eos_token_id, 8), 8)
    swap_output_rows(model, free[index][k], tokenizer.eos_token_id)  # EOS comes where that token came

    expected = [greedy_causal_reference(model, p, tokenizer.eos_token_id, 8) for p in prompts]
    assert expected[index] == free[index][:k]
    answers = generate_causal(model, tokenizer, prompts, max_new_tokens=8)
    assert answers == expected
    assert answers[index] == free[index][:k]
    assert all(tokenizer.eos_token_id not in answer for answer in answers)


# ---------------------------------------------------------------------------------------------
# masked


@pytest.mark.parametrize("seed", [2, 4, 6])  # seed 4 stops at EOS by itself, after 0 or 1 token
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_generate_masked_matches_hand_written_loop(tokenizer, attn_implementation, seed):
    model = make_model(tokenizer, attn_implementation, seed=seed)
    prompts = prompts_of(tokenizer)
    expected = [greedy_masked_reference(model, tokenizer, p, 5) for p in prompts]
    assert any(expected), "the reference produced nothing at all; the test proves little"
    assert generate_masked(model, tokenizer, prompts, max_new_tokens=5) == expected
    assert [generate_masked(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts] == expected
    assert generate(model, tokenizer, prompts, "masked", max_new_tokens=5, batch_size=2) == expected


@pytest.mark.parametrize("seed", [2, 6])
def test_generate_masked_with_shift_reads_the_position_left_of_the_slot(tokenizer, seed):
    model = make_model(tokenizer, "sdpa", seed=seed)
    prompts = prompts_of(tokenizer)
    expected = [greedy_masked_reference(model, tokenizer, p, 5, shift=True) for p in prompts]
    assert expected != [greedy_masked_reference(model, tokenizer, p, 5) for p in prompts]
    assert generate_masked(model, tokenizer, prompts, max_new_tokens=5, shift=True) == expected
    assert generate(model, tokenizer, prompts, "masked", max_new_tokens=5, batch_size=2, shift=True) == expected


@pytest.mark.parametrize("seed", [2, 6])
def test_generate_masked_with_keep_sink_keeps_position_0_causal(tokenizer, seed):
    model = make_model(tokenizer, "sdpa", seed=seed)
    prompts = prompts_of(tokenizer)
    expected = [greedy_masked_reference(model, tokenizer, p, 5, shift=True, keep_sink=True) for p in prompts]
    assert expected != [greedy_masked_reference(model, tokenizer, p, 5, shift=True) for p in prompts]
    assert generate_masked(model, tokenizer, prompts, max_new_tokens=5, shift=True, keep_sink=True) == expected
    assert generate(model, tokenizer, prompts, "masked", max_new_tokens=5, batch_size=2, shift=True,
                    keep_sink=True) == expected


def test_generate_masked_stops_at_eos(tokenizer):
    prompts = prompts_of(tokenizer)
    model, index, k, free = model_with_a_long_answer(
        tokenizer, lambda m, p: greedy_masked_reference(m, tokenizer, p, 8), 8)
    swap_output_rows(model, free[index][k], tokenizer.eos_token_id)

    expected = [greedy_masked_reference(model, tokenizer, p, 8) for p in prompts]
    assert expected[index] == free[index][:k]
    answers = generate_masked(model, tokenizer, prompts, max_new_tokens=8)
    assert answers == expected
    assert answers[index] == free[index][:k]
    assert all(tokenizer.eos_token_id not in answer for answer in answers)


def test_generate_masked_never_outputs_special_tokens(tokenizer):
    model = make_model(tokenizer, seed=5)
    forbidden = [tokenizer.mask_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id]

    def favour_special_tokens(module, inputs, output):
        output = output.clone()
        output[..., forbidden] += 1e4
        return output

    model.lm_head.register_forward_hook(favour_special_tokens)
    prompts = prompts_of(tokenizer)
    answers = generate_masked(model, tokenizer, prompts, max_new_tokens=5)
    assert answers == [greedy_masked_reference(model, tokenizer, p, 5) for p in prompts]
    assert any(answers)
    for answer in answers:
        assert not set(answer) & set(forbidden)
        assert tokenizer.eos_token_id not in answer


def test_generate_masked_needs_a_mask_token(tokenizer):
    model = make_model(tokenizer)

    class NoMask:
        mask_token_id = None

    with pytest.raises(ValueError, match="mask token"):
        generate_masked(model, NoMask(), [[1, 5]], max_new_tokens=2)


# ---------------------------------------------------------------------------------------------
# masked, any order


@torch.no_grad()
def any_order_reference(model, tokenizer, prompt: list[int], max_new_tokens: int, shift: bool = False,
                        keep_sink: bool = False) -> tuple[list[int], list[int]]:
    """(answer, the slot filled at each step) for one prompt, written out slot by slot."""
    eos, mask_id = tokenizer.eos_token_id, tokenizer.mask_token_id
    banned = [i for i in tokenizer.all_special_ids if i != eos]
    row = list(prompt) + [mask_id] * max_new_tokens
    end, order = len(row), []
    while mask_id in row[len(prompt):end]:
        slots = [i for i in range(len(prompt), end) if row[i] == mask_id]
        allowed = torch.zeros(end, end, dtype=torch.bool)
        for query in range(end):
            for key in range(end):
                allowed[query, key] = key == query or key not in slots
        if keep_sink:
            allowed[0, 1:] = False
        mask = torch.zeros(1, 1, end, end).masked_fill(~allowed, torch.finfo(torch.float32).min)
        logits = model(input_ids=torch.tensor([row[:end]]), attention_mask=mask).logits[0]
        best = None
        for slot in slots:
            scores = logits[slot - int(shift)].clone()
            scores[banned] = float("-inf")
            probability, token = scores.softmax(-1).max(-1)
            if best is None or probability > best[0]:
                best = (probability, slot, int(token))
        _, slot, token = best
        row[slot] = token
        order.append(slot - len(prompt))
        if token == eos:
            end = slot + 1
    answer = row[len(prompt):end]
    return (answer[:answer.index(eos)] if eos in answer else answer), order


@pytest.mark.parametrize("seed", [2, 4, 6])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_generate_masked_any_order_matches_hand_written_loop(tokenizer, attn_implementation, seed):
    model = make_model(tokenizer, attn_implementation, seed=seed)
    prompts = prompts_of(tokenizer)
    expected = [any_order_reference(model, tokenizer, p, 5)[0] for p in prompts]
    assert any(expected)
    assert generate_masked_any_order(model, tokenizer, prompts, max_new_tokens=5) == expected
    assert generate(model, tokenizer, prompts, "masked_any_order", max_new_tokens=5, batch_size=2) == expected


def test_generate_masked_any_order_is_not_left_to_right(tokenizer):
    """Across seeds and prompts some answer is built out of order, and then it differs from what
    left-to-right masked decoding gives."""
    out_of_order = differs = 0
    for seed in range(6):
        model = make_model(tokenizer, seed=seed)
        for prompt in prompts_of(tokenizer):
            answer, order = any_order_reference(model, tokenizer, prompt, 5)
            if order != sorted(order):
                out_of_order += 1
                differs += answer != greedy_masked_reference(model, tokenizer, prompt, 5)
    assert out_of_order > 0 and differs > 0


@pytest.mark.parametrize("shift, keep_sink", [(True, False), (True, True)])
def test_generate_masked_any_order_with_shift_and_sink(tokenizer, shift, keep_sink):
    model = make_model(tokenizer, "sdpa", seed=2)
    prompts = prompts_of(tokenizer)
    expected = [any_order_reference(model, tokenizer, p, 5, shift=shift, keep_sink=keep_sink)[0] for p in prompts]
    assert generate_masked_any_order(model, tokenizer, prompts, max_new_tokens=5, shift=shift,
                                     keep_sink=keep_sink) == expected


def test_generate_masked_any_order_drops_the_slots_after_an_eos(tokenizer):
    model = make_model(tokenizer, seed=3)
    eos = tokenizer.eos_token_id

    def eos_sure_at_slot_2(module, inputs, output):  # the third slot after each prompt: EOS, surely
        output = output.clone()
        for b, start in enumerate(starts):
            output[b, start + 2, eos] += 1e4
        return output

    prompts = prompts_of(tokenizer)
    starts = [len(p) for p in prompts]
    model.lm_head.register_forward_hook(eos_sure_at_slot_2)
    # (the hook edits the [batch, length, vocab] logits, so the head runs at every position here)
    answers = generate_masked_any_order(model, tokenizer, prompts, max_new_tokens=6, slots_only=False)
    assert all(len(answer) <= 2 and eos not in answer for answer in answers)
    assert any(len(answer) == 2 for answer in answers)


# ---------------------------------------------------------------------------------------------
# exact match


def without_rouge(metrics: dict) -> dict:
    """Exact match and n (ROUGE-1 and borrowed answers have tests of their own)."""
    return {key: value for key, value in metrics.items() if key not in ("rouge1_recall", "borrowed")}


def test_rouge1_recall_counts_reference_content_words():
    from mft.eval import rouge1_recall

    assert rouge1_recall("Paris, of course!", "The capital is Paris.") == pytest.approx(1 / 2)  # capital, paris
    assert rouge1_recall("paris capital", "The capital is Paris.") == 1.0
    assert rouge1_recall("Lyon", "The capital is Paris.") == 0.0
    assert rouge1_recall("a b", "b b c") == pytest.approx(1 / 3)  # multiplicity: one of the two b's
    assert rouge1_recall("the", "The") == 1.0 and rouge1_recall("a", "The") == 0.0  # stopword-only reference


def test_evaluate_qa_exact_match(tokenizer, monkeypatch):
    qa = [
        {"question": "w1 w2", "answer": "w3 w4", "direction": "forward"},        # right
        {"question": "w5", "answer": "W6  W7", "direction": "forward"},          # right (case, spaces)
        {"question": "w8 w9", "answer": "w10", "direction": "forward"},          # wrong (extra token)
        {"question": "w11", "answer": "w12 w13", "direction": "forward"},        # wrong (too short)
        {"question": "w14 w15", "answer": " w16 ", "direction": "backward"},     # right (spaces)
        {"question": "w17", "answer": "w18 w19", "direction": "backward"},       # wrong order
        {"question": "w20", "answer": "w21", "direction": "backward"},           # right (EOS/pad skipped)
    ]
    said = ["w3 w4", "w6 w7", "w10 w11", "w12", "w16", "w19 w18", "w21"]
    answers = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in said]
    answers[-1] = answers[-1] + [tokenizer.eos_token_id]
    calls = []

    def fake_generate(model, tok, prompts, decoding, max_new_tokens, batch_size=64, shift=False, keep_sink=False,
                      attend_to_masked=False, prompt_sees_answer=True):
        calls.append((prompts, decoding, max_new_tokens))
        assert prompts == [encode_prompt(tokenizer, item["question"]) for item in qa]
        return [list(a) for a in answers]

    monkeypatch.setattr(mft.eval, "generate", fake_generate)
    model = torch.nn.Linear(2, 2)
    model.train()
    results = mft.eval.evaluate_qa(model, tokenizer, qa, "masked", max_new_tokens=3)
    assert calls and calls[0][1:] == ("masked", 3)
    assert model.training  # the training mode is restored
    assert set(results) == {"forward", "backward"}
    assert without_rouge(results["forward"]) == {"exact_match": pytest.approx(2 / 4), "n": 4}
    assert without_rouge(results["backward"]) == {"exact_match": pytest.approx(2 / 3), "n": 3}
    # ROUGE-1 recall: per item 1, 1, 1 (w10 found), 0.5 (w12 of w12 w13) | 1, 1 (both words), 1
    assert results["forward"]["rouge1_recall"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert results["backward"]["rouge1_recall"] == pytest.approx(1.0)
    assert mft.eval.flatten_metrics(results) == {"eval_forward_exact_match": pytest.approx(0.5),
                                                 "eval_forward_borrowed": results["forward"]["borrowed"],
                                                 "eval_backward_borrowed": results["backward"]["borrowed"],
                                                 "eval_backward_exact_match": pytest.approx(2 / 3),
                                                 "eval_forward_rouge1_recall": pytest.approx(0.875),
                                                 "eval_backward_rouge1_recall": pytest.approx(1.0)}


def test_evaluate_qa_all_right_and_all_wrong(tokenizer, monkeypatch):
    qa = [{"question": f"w{i}", "answer": f"w{i + 1}", "direction": d}
          for i, d in zip(range(1, 7), ["forward", "backward"] * 3)]
    monkeypatch.setattr(mft.eval, "generate",
                        lambda m, t, prompts, *a, **k: [tokenizer(item["answer"], add_special_tokens=False)["input_ids"]
                                                        for item in qa])
    model = torch.nn.Linear(2, 2).eval()
    results = mft.eval.evaluate_qa(model, tokenizer, qa, "causal")
    assert results == {"forward": {"exact_match": 1.0, "rouge1_recall": 1.0, "n": 3},
                       "backward": {"exact_match": 1.0, "rouge1_recall": 1.0, "n": 3}}
    assert not model.training

    monkeypatch.setattr(mft.eval, "generate", lambda m, t, prompts, *a, **k: [[] for _ in prompts])
    results = mft.eval.evaluate_qa(model, tokenizer, qa, "causal")
    # every answer is empty: wrong, and nobody else's answer either
    assert results == {"forward": {"exact_match": 0.0, "rouge1_recall": 0.0, "n": 3, "borrowed": 0.0},
                       "backward": {"exact_match": 0.0, "rouge1_recall": 0.0, "n": 3, "borrowed": 0.0}}


def test_evaluate_qa_with_a_real_model(tokenizer):
    """No monkeypatching: the answers are those of generate_masked, compared after decoding."""
    model = make_model(tokenizer, seed=6)
    prompts = prompts_of(tokenizer)
    generated = generate_masked(model, tokenizer, prompts, max_new_tokens=3)
    qa = []
    for i, (question, answer) in enumerate(zip(QUESTIONS, generated)):
        text = tokenizer.decode(answer) if i % 2 == 0 else "w39 w38 w37 w36"
        qa.append({"question": question, "answer": text.upper() or "w0", "direction": "forward" if i < 3 else "backward"})
    results = mft.eval.evaluate_qa(model, tokenizer, qa, "masked", max_new_tokens=3)
    expected = {}
    for direction in ("forward", "backward"):
        hits = [" ".join(tokenizer.decode(a, skip_special_tokens=True).lower().split()) == " ".join(item["answer"].lower().split())
                for item, a in zip(qa, generated) if item["direction"] == direction]
        expected[direction] = {"exact_match": pytest.approx(sum(hits) / len(hits)), "n": len(hits)}
    assert {d: without_rouge(m) for d, m in results.items()} == expected


# ---------------------------------------------------------------------------------------------
# faster masked decoding (issue 19): the exact paths give the reference's answers token for token

RULES = [dict(shift=False, keep_sink=False, attend_to_masked=False), dict(shift=True, keep_sink=True, attend_to_masked=False),
         dict(shift=True, keep_sink=False, attend_to_masked=True), dict(shift=False, keep_sink=True, attend_to_masked=True)]


def count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_the_lm_head_at_the_slots_alone_gives_the_same_answers(tokenizer, rules, attn_implementation):
    model = make_model(tokenizer, attn_implementation)
    prompts = prompts_of(tokenizer)
    for decode in (generate_masked, generate_masked_any_order):
        full = decode(model, tokenizer, prompts, 6, **rules, slots_only=False)
        assert decode(model, tokenizer, prompts, 6, **rules, slots_only=True) == full
        assert any(full)


@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_the_prompt_cache_is_the_decoder_of_a_prompt_that_never_sees_the_answer(tokenizer, rules, attn_implementation):
    from mft.decoding import generate_masked_cached

    model = make_model(tokenizer, attn_implementation, seed=1)
    prompts = prompts_of(tokenizer)  # 1 to 6 words: left padding and restarting positions are exercised
    blocked = generate_masked(model, tokenizer, prompts, 6, **rules, prompt_sees_answer=False)
    assert generate_masked_cached(model, tokenizer, prompts, 6, **rules) == blocked
    assert generate_masked_cached(model, tokenizer, prompts, 6, **rules, slots_only=False) == blocked
    # one prompt at a time: the same (padding is never attended)
    assert [generate_masked_cached(model, tokenizer, [p], 6, **rules)[0] for p in prompts] == blocked


def test_the_prompt_rule_changes_answers_and_the_cache_follows_the_blocked_rule(tokenizer):
    from mft.decoding import generate_masked_cached

    differ = 0
    for seed in range(4):
        model = make_model(tokenizer, seed=seed)
        prompts = prompts_of(tokenizer)
        seeing = generate_masked(model, tokenizer, prompts, 6)
        blocked = generate_masked(model, tokenizer, prompts, 6, prompt_sees_answer=False)
        assert generate_masked_cached(model, tokenizer, prompts, 6) == blocked
        differ += seeing != blocked
    assert differ  # the rule matters, so the test above can fail


@pytest.mark.parametrize("decode_name", ["masked", "masked_any_order", "causal"])
def test_prompts_of_different_lengths_decode_together_as_alone(tokenizer, decode_name):
    model = make_model(tokenizer, "sdpa", seed=2)
    prompts = prompts_of(tokenizer)
    together = generate(model, tokenizer, prompts, decode_name, 6, batch_size=len(prompts), shift=True, keep_sink=True)
    alone = [generate(model, tokenizer, [p], decode_name, 6, shift=True, keep_sink=True)[0] for p in prompts]
    assert together == alone


def test_threshold_parallel_decoding_writes_several_slots_per_step(tokenizer):
    model = make_model(tokenizer, seed=3)
    prompts = prompts_of(tokenizer)
    exact = generate_masked_any_order(model, tokenizer, prompts, 6)
    calls, handle = count_forwards(model)
    try:
        # a threshold no slot reaches (probabilities < 1): one slot per step, the exact decoder
        assert generate_masked_any_order(model, tokenizer, prompts, 6, threshold=1.0) == exact
        exact_steps = len(calls)
        calls.clear()
        # every slot passes a tiny threshold: all written in the first step, each its first arg-max
        everything = generate_masked_any_order(model, tokenizer, prompts, 6, threshold=1e-9)
        assert len(calls) == 1 < exact_steps
    finally:
        handle.remove()
    # ... each slot's arg-max with every slot masked, the answer ending at the first EOS
    for prompt, answer in zip(prompts, everything):
        assert answer == first_step_argmax(model, tokenizer, prompt, 6)


@pytest.mark.parametrize("rules", RULES[:2])
def test_left_to_right_threshold_decoding_keeps_order_and_writes_confident_runs(tokenizer, rules):
    from mft.decoding import THRESHOLD_SLOTS, generate_masked_cached

    model = make_model(tokenizer, seed=4)
    prompts = prompts_of(tokenizer)
    exact = generate_masked(model, tokenizer, prompts, 6, **rules)
    calls, handle = count_forwards(model)
    try:
        # no slot after the first reaches probability 1: one token per step, the exact decoder
        assert generate_masked(model, tokenizer, prompts, 6, **rules, threshold=1.0) == exact
        exact_steps = len(calls)
        calls.clear()
        everything = generate_masked(model, tokenizer, prompts, 6, **rules, threshold=1e-9)
        assert len(calls) == 1 < exact_steps  # 6 <= THRESHOLD_SLOTS slots: one step
    finally:
        handle.remove()
    assert 6 <= THRESHOLD_SLOTS
    # every slot written in one step: each its arg-max with all six slots masked, cut at the first EOS
    if not rules["shift"] and not rules["keep_sink"]:
        for prompt, answer in zip(prompts, everything):
            assert answer == first_step_argmax(model, tokenizer, prompt, 6)
    # the first token is always the exact decoder's (the extra slots are no one's keys)
    for fast, reference in zip(everything, exact):
        assert fast[:1] == reference[:1]
    # the prompt cache follows the same rule: the blocked dense decoder with the same threshold,
    # rows advancing at different paces in one batch
    for threshold in (1e-9, 0.05, 0.2):
        blocked = generate_masked(model, tokenizer, prompts, 9, **rules, prompt_sees_answer=False, threshold=threshold)
        assert generate_masked_cached(model, tokenizer, prompts, 9, **rules, threshold=threshold) == blocked


@pytest.mark.parametrize("rules", RULES[:2])
def test_the_answer_cache_runs_two_positions_per_step_and_batches_as_alone(tokenizer, rules):
    from mft.decoding import generate_masked_cached

    model = make_model(tokenizer, "sdpa", seed=5)
    prompts = prompts_of(tokenizer)
    widths = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                             with_kwargs=True)
    try:
        cached = generate_masked_cached(model, tokenizer, prompts, 6, **rules, answer_cache=True)
    finally:
        handle.remove()
    per_step = 1 if rules["shift"] else 2  # with shift the hidden slot is left out
    assert widths[0] == max(len(p) for p in prompts) and set(widths[1:]) == {per_step}  # the prefill, then the steps
    assert len(widths) - 1 == max(len(a) for a in cached) + (max(len(a) for a in cached) < 6)
    assert [generate_masked_cached(model, tokenizer, [p], 6, **rules, answer_cache=True)[0] for p in prompts] == cached
    # the first token is the prompt cache's (the same positions and keys at step 0)
    prompt_only = generate_masked_cached(model, tokenizer, prompts, 6, **rules)
    assert [a[:1] for a in cached] == [a[:1] for a in prompt_only]


@torch.no_grad()
def first_step_argmax(model, tokenizer, prompt: list[int], slots: int) -> list[int]:
    eos, mask_id = tokenizer.eos_token_id, tokenizer.mask_token_id
    banned = [i for i in tokenizer.all_special_ids if i != eos]
    row = list(prompt) + [mask_id] * slots
    allowed = torch.ones(len(row), len(row), dtype=torch.bool)
    allowed[:, len(prompt):] = False
    allowed |= torch.eye(len(row), dtype=torch.bool)
    mask = torch.zeros(1, 1, len(row), len(row)).masked_fill(~allowed, torch.finfo(torch.float32).min)
    logits = model(input_ids=torch.tensor([row]), attention_mask=mask).logits[0, len(prompt):]
    logits[:, banned] = float("-inf")
    tokens = logits.argmax(-1).tolist()
    return tokens[:tokens.index(eos)] if eos in tokens else tokens


def test_speed_options_are_refused_where_they_do_not_apply(tokenizer):
    from mft.errors import RecipeError

    model = make_model(tokenizer)
    prompts = prompts_of(tokenizer)
    for kwargs, message in [({"decoding": "causal", "threshold": 0.9}, "applies to masked decoding"),
                            ({"decoding": "masked_any_order", "threshold": 0.0}, "probability in"),
                            ({"decoding": "causal", "prompt_cache": True}, "prompt_cache applies to masked")]:
        with pytest.raises(RecipeError, match=message):
            generate(model, tokenizer, prompts, max_new_tokens=3, **kwargs)
