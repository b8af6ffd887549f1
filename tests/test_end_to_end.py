"""End-to-end behaviour of the package, through its public API only (recipes and `mft.train.run`,
the objectives, `MFTCollator`, `MFTTrainer`, `mft.decoding`, `mft.models.build_model`, the task and
tokenizer helpers of `mft.data`), so that these tests keep holding when the internals move:

1. the reversal curse and its cure on a tiny retrieval run: MLM-U answers held-out backward
   questions, next-token prediction (AR) answers the forward ones only;
2. gradient accumulation gives the one-big-batch training over several AdamW steps with gradient
   clipping and a warm-up/decay schedule (MLM-U's 1/r weights make the normalisation matter);
3. causal, left-to-right masked and any-order masked decoding of the GPT-2, BERT and encoder-decoder
   models equal independent reference loops;
4. one masked decoding step computes the very logits that training computes for a row whose answer
   is masked from its last token on: decoding asks exactly what training asked.

No network: tiny models built from configs, word-level tokenizers built from the task's words.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mft.collator import MFTCollator
from mft.config import ModelConfig, parse_recipe
from mft.training_args import MFTConfig
from mft.data import RetrievalTask, TokenizedDataset, build_word_tokenizer, encode_prompt, row_texts
from mft.decoding import generate, generate_causal, generate_masked, generate_masked_any_order
from mft.models import build_model
from mft.objectives import IGNORE, MLMU
from mft.train import run
from mft.trainer import MFTTrainer


# ---------------------------------------------------------------------------------------------
# 1. the reversal curse on a tiny retrieval run


def retrieval_recipe(objective: str, output_dir) -> dict:
    """40 key-value pairs (80% of the queries of each direction trained, 8 asked per direction), a
    2-layer Llama of width 64, 1000 steps of 64 rows: ~18 s per run on one CPU thread. Measured with
    these settings: MLM-U answered 1.0 of the held-out backward questions for training seeds 0-3 and
    0.75-1.0 for task seeds 1-2 (at 800 steps: 0.625 at worst); AR 1.0 forward, 0.0 backward."""
    return {
        "task": {"name": "retrieval", "num_pairs": 40, "tokens_per_entity": 2, "query_fraction": 0.8, "seed": 0},
        "model": {"architecture": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 256, "max_position_embeddings": 16},
        "objective": {"name": objective},
        "training": {"output_dir": str(output_dir), "max_steps": 1000, "per_device_train_batch_size": 64,
                     "learning_rate": 3.0e-3, "weight_decay": 0.0, "lr_scheduler_type": "cosine", "warmup_steps": 50,
                     "max_grad_norm": 1.0, "logging_steps": 100, "eval_strategy": "no", "save_strategy": "no",
                     "seed": 0, "use_cpu": True, "report_to": "none", "disable_tqdm": True,
                     "dataloader_num_workers": 0, "max_new_tokens": 4},
    }


def test_mlmu_answers_held_out_backward_questions_and_ar_does_not(tmp_path):
    mlmu = run(parse_recipe(retrieval_recipe("mlm_u", tmp_path / "mlm_u")))
    ar = run(parse_recipe(retrieval_recipe("ar", tmp_path / "ar")))
    for results in (mlmu, ar):
        assert results["forward"]["n"] == 8 and results["backward"]["n"] == 8
    # AR learnt the task (it answers the held-out forward questions) but cannot reverse it ...
    assert ar["forward"]["exact_match"] >= 0.75, ar
    assert ar["backward"]["exact_match"] <= 0.125, ar
    # ... while MLM-U, on the same data, model and steps, answers both directions.
    assert mlmu["backward"]["exact_match"] >= 0.5, mlmu
    assert mlmu["forward"]["exact_match"] >= 0.5, mlmu
    assert mlmu["backward"]["exact_match"] >= ar["backward"]["exact_match"] + 0.375


# ---------------------------------------------------------------------------------------------
# 2. gradient accumulation over several AdamW steps


def tiny_llama(tokenizer, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    options = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, intermediate_size=64, max_position_embeddings=32,
                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    options.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**options))


def flat_parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


class PerMicroBatchMean(MFTTrainer):
    """The classic mistake: each micro-batch normalised by its own weight, the means averaged."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=None)
        if return_outputs:
            return loss
        return loss / self.args.gradient_accumulation_steps


def train_accumulated(tmp_path, batch_size: int, accumulation: int, trainer_class=MFTTrainer):
    """4 AdamW steps of 8 examples each (2 epochs of the 16 examples, taken in order) with weight decay,
    clipping at norm 1 and linear decay after a 2-step warm-up; MLM-U with 1/r weights, whose sums
    differ from micro-batch to micro-batch. Returns (initial parameters, final parameters, log)."""
    data = RetrievalTask(num_pairs=8, tokens_per_entity=2, query_fraction=0.5, seed=3).build()
    tokenizer = build_word_tokenizer([text for row in data.train + data.qa for text in row_texts(row)])
    dataset = TokenizedDataset.from_rows(tokenizer, data.train)
    assert len(dataset) == 16
    model = tiny_llama(tokenizer)
    initial = flat_parameters(model)
    args = MFTConfig(output_dir=str(tmp_path / f"b{batch_size}x{accumulation}{trainer_class.__name__}"),
                     max_steps=4, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                     optim="adamw_torch", learning_rate=1e-2, weight_decay=0.1, max_grad_norm=1.0,
                     lr_scheduler_type="linear", warmup_steps=2, train_sampling_strategy="sequential",
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                     disable_tqdm=True, dataloader_num_workers=0)
    collator = MFTCollator(MLMU(weighting="1/r"), tokenizer, seed=0)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=collator,
                            processing_class=tokenizer)
    trainer.train()
    log = [entry for entry in trainer.state.log_history if "loss" in entry]
    return initial, flat_parameters(trainer.model), log


def test_gradient_accumulation_equals_one_big_batch_over_adamw_steps(tmp_path):
    initial, big, big_log = train_accumulated(tmp_path, 8, 1)
    initial_again, accumulated, accumulated_log = train_accumulated(tmp_path, 2, 4)
    assert torch.equal(initial, initial_again)

    update = (big - initial).abs().max().item()
    difference = (accumulated - big).abs().max().item()
    assert update > 1e-2, update  # 4 Adam steps of lr <= 1e-2 moved the weights
    assert difference < 1e-5, (difference, update)  # ... and both runs moved them the same way

    # the same loss and the same (pre-clipping) gradient norm at every step, and clipping was at work
    assert [entry["step"] for entry in big_log] == [1, 2, 3, 4] == [entry["step"] for entry in accumulated_log]
    for one, other in zip(big_log, accumulated_log):
        assert one["loss"] == pytest.approx(other["loss"], rel=1e-5, abs=1e-6)
        assert one["grad_norm"] == pytest.approx(other["grad_norm"], rel=1e-4)
        assert one["learning_rate"] == pytest.approx(other["learning_rate"])
    assert any(entry["grad_norm"] > 1.0 for entry in big_log), big_log
    assert len({entry["learning_rate"] for entry in big_log}) > 2, big_log  # warm-up, then decay

    # A per-micro-batch normalisation would have been caught: it trains differently by far more.
    _, wrong, _ = train_accumulated(tmp_path, 2, 4, PerMicroBatchMean)
    assert (wrong - big).abs().max().item() > 100 * max(difference, 1e-7)


# ---------------------------------------------------------------------------------------------
# 3. decoding of GPT-2, BERT and the encoder-decoder against reference loops

WORDS = [f"w{i}" for i in range(40)]
QUESTIONS = ["w1", "w2 w3 w4", "w5 w6", "w7 w8 w9 w10 w11 w12", "w13 w14 w15 w16"]
MAX_NEW_TOKENS = 5


@pytest.fixture(scope="module")
def word_tokenizer():
    return build_word_tokenizer([" ".join(WORDS)])


def tiny_model(architecture: str, tokenizer, attn_implementation: str = "eager", seed: int = 0):
    """A randomly initialised tiny model of `architecture`, built as mft builds from-scratch models,
    with a large-variance output layer: well-separated logits, so that the arg-max does not hinge
    on rounding and greedy answers are not all alike."""
    config = ModelConfig(architecture=architecture, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32, attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    model = build_model(config, tokenizer)
    with torch.no_grad():
        if architecture == "encoder_decoder":
            # Its initialisation (std 0.02, the decoder's input one shared vector) answers every
            # question with the same token; unit-scale weights make the answers depend on the input.
            for parameter in model.parameters():
                if parameter.dim() >= 2:
                    parameter.normal_(0, parameter.shape[-1] ** -0.5)
            model.query.normal_(0, 1.0)
        model.get_output_embeddings().weight.normal_(0, 1.0)
    return model.eval()


def swap_output_rows(model, a: int, b: int) -> None:
    """The model now predicts a where it predicted b and b where it predicted a."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight[[a, b]] = head.weight[[b, a]].clone()
        if getattr(head, "bias", None) is not None:
            head.bias[[a, b]] = head.bias[[b, a]].clone()


def with_an_early_eos(model, tokenizer, prompts, reference) -> int:
    """Give EOS the output row of the most frequent token that the model's free answers produce
    after their first token but never as one: answers now stop early (the cut at EOS, rows leaving
    the batch, any-order's dropped slots are all exercised) without stopping before a first token.
    Returns that token."""
    free = [reference(model, tokenizer, prompt) for prompt in prompts]
    firsts = {answer[0] for answer in free if answer}
    later = Counter(token for answer in free for token in answer[1:] if token not in firsts)
    assert later, free
    token = later.most_common(1)[0][0]
    swap_output_rows(model, token, tokenizer.eos_token_id)
    return token


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """[L, L] bool (query may attend to key) -> the [1, 1, L, L] additive float mask HF models take
    (and the encoder-decoder reads as 'allowed where 0')."""
    return torch.zeros(1, 1, *allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def banned_ids(tokenizer) -> list[int]:
    return [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]


@torch.no_grad()
def causal_reference(model, tokenizer, prompt: list[int]) -> list[int]:
    """Greedy, one prompt at a time, no padding, no cache: the whole sequence re-run every step."""
    ids, answer = list(prompt), []
    for _ in range(MAX_NEW_TOKENS):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
        answer.append(token)
    return answer


@torch.no_grad()
def masked_reference(model, tokenizer, prompt: list[int]) -> list[int]:
    """Left to right: append one mask slot, let every real token see every real token and the slot
    see them and itself (nobody else sees the slot), read the slot's arg-max, write it in."""
    ids, answer = list(prompt), []
    for _ in range(MAX_NEW_TOKENS):
        row = ids + [tokenizer.mask_token_id]
        n = len(row)
        allowed = torch.zeros(n, n, dtype=torch.bool)
        allowed[:, : n - 1] = True
        allowed[n - 1, n - 1] = True
        logits = model(input_ids=torch.tensor([row]), attention_mask=additive(allowed)).logits[0, n - 1].clone()
        logits[banned_ids(tokenizer)] = float("-inf")
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
        answer.append(token)
    return answer


@torch.no_grad()
def any_order_reference(model, tokenizer, prompt: list[int]) -> list[int]:
    """MAX_NEW_TOKENS mask slots after the prompt, none of them a key; at each step the open slot with
    the most probable token gets it; an EOS written at a slot drops the slots after it."""
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    row = list(prompt) + [mask] * MAX_NEW_TOKENS
    end = len(row)
    while True:
        open_slots = [p for p in range(len(prompt), end) if row[p] == mask]
        if not open_slots:
            break
        allowed = torch.tensor([[q == k or k not in open_slots for k in range(end)] for q in range(end)])
        logits = model(input_ids=torch.tensor([row[:end]]), attention_mask=additive(allowed)).logits[0]
        candidates = []
        for slot in open_slots:
            scores = logits[slot].clone()
            scores[banned_ids(tokenizer)] = float("-inf")
            probability, token = scores.softmax(-1).max(-1)
            candidates.append((float(probability), -slot, int(token)))
        _, negative_slot, token = max(candidates)  # the most confident; the leftmost on a tie
        row[-negative_slot] = token
        if token == eos:
            end = -negative_slot + 1
    answer = row[len(prompt):end]
    return answer[:answer.index(eos)] if eos in answer else answer


@torch.no_grad()
def first_step_logits(model, tokenizer, prompt: list[int], decoding: str) -> torch.Tensor:
    """[positions, vocabulary]: the logits the first decoding step reads, for one prompt alone: the
    last position (causal), the one slot (masked), every slot (any order)."""
    if decoding == "causal":
        return model(input_ids=torch.tensor([prompt])).logits[0, -1:]
    slots = 1 if decoding == "masked" else MAX_NEW_TOKENS
    row = list(prompt) + [tokenizer.mask_token_id] * slots
    allowed = torch.ones(len(row), len(row), dtype=torch.bool)
    allowed[:, len(prompt):] = torch.eye(len(row), dtype=torch.bool)[:, len(prompt):]  # slots: no keys
    return model(input_ids=torch.tensor([row]), attention_mask=additive(allowed)).logits[0, len(prompt):]


@torch.no_grad()
def assert_honours_4d_masks(model, tokenizer, prompt: list[int]) -> None:
    """The references' masks really reach the model: under the left-to-right rule the prompt
    positions do not see the slot (changing its token changes none of their logits) and do see
    later prompt tokens (bidirectional: position 0 depends on the last prompt token)."""
    row = list(prompt) + [tokenizer.mask_token_id]
    n = len(row)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:, : n - 1] = True
    allowed[n - 1, n - 1] = True
    mask = additive(allowed)
    logits = model(input_ids=torch.tensor([row]), attention_mask=mask).logits[0]
    slot_changed = row[:-1] + [tokenizer.convert_tokens_to_ids("w30")]
    assert torch.allclose(model(input_ids=torch.tensor([slot_changed]), attention_mask=mask).logits[0, : n - 1],
                          logits[: n - 1], atol=1e-5)
    last_changed = row[:-2] + [tokenizer.convert_tokens_to_ids("w31"), row[-1]]
    assert not torch.allclose(model(input_ids=torch.tensor([last_changed]), attention_mask=mask).logits[0, 0],
                              logits[0], atol=1e-4)


# BERT is a masked LM only (no causal decoding); GPT-2 and the encoder-decoder decode both ways. The
# encoder-decoder has a single attention implementation of its own.
DECODING_CASES = [(architecture, decoding, attn_implementation)
                  for architecture, decodings, implementations in [
                      ("gpt2", ["causal", "masked", "masked_any_order"], ["eager", "sdpa"]),
                      ("bert", ["masked", "masked_any_order"], ["eager", "sdpa"]),
                      ("encoder_decoder", ["causal", "masked", "masked_any_order"], ["sdpa"])]
                  for decoding in decodings for attn_implementation in implementations]


MODEL_SEEDS = {"gpt2": 0, "bert": 1, "encoder_decoder": 0}  # BERT seed 0: any order = left to right


@pytest.mark.parametrize("architecture,decoding,attn_implementation", DECODING_CASES)
def test_decoding_matches_reference_loops(word_tokenizer, architecture, decoding, attn_implementation):
    tokenizer = word_tokenizer
    model = tiny_model(architecture, tokenizer, attn_implementation, seed=MODEL_SEEDS[architecture])
    prompts = [encode_prompt(tokenizer, question) for question in QUESTIONS]
    assert len({len(p) for p in prompts}) == len(prompts)  # a batch of different lengths
    reference, decode = {
        "causal": (causal_reference, generate_causal),
        "masked": (masked_reference, generate_masked),
        "masked_any_order": (any_order_reference, generate_masked_any_order),
    }[decoding]
    if decoding != "causal":
        assert_honours_4d_masks(model, tokenizer, prompts[3])
    with_an_early_eos(model, tokenizer, prompts, reference)
    expected = [reference(model, tokenizer, prompt) for prompt in prompts]
    # The comparison means something: every prompt gets an answer, some are long, some end at an EOS,
    # and the any-order answers are not all the left-to-right ones.
    assert all(expected), expected
    assert max(len(answer) for answer in expected) >= 3, expected
    assert min(len(answer) for answer in expected) < MAX_NEW_TOKENS, expected
    if decoding == "masked_any_order":
        assert expected != [masked_reference(model, tokenizer, prompt) for prompt in prompts]
    assert decode(model, tokenizer, prompts, MAX_NEW_TOKENS) == expected  # (masked: the LM head at the slots alone)
    # the whole logits of each step, to compare with the reference's
    full = {} if decoding == "causal" else {"slots_only": False}
    seen = []
    hook = model.register_forward_hook(lambda module, inputs, output: seen.append(output.logits.detach().clone()))
    try:
        answers = decode(model, tokenizer, prompts, MAX_NEW_TOKENS, **full)
    finally:
        hook.remove()
    assert answers == expected
    # The batched first step (padded, several prompts) computed what each prompt alone gives.
    for b, prompt in enumerate(prompts):
        read = {"causal": [seen[0].shape[1] - 1], "masked": [len(prompt)],
                "masked_any_order": list(range(len(prompt), len(prompt) + MAX_NEW_TOKENS))}[decoding]
        assert torch.allclose(seen[0][b, read], first_step_logits(model, tokenizer, prompt, decoding),
                              atol=1e-4, rtol=1e-4), (b, decoding)
    assert generate(model, tokenizer, prompts, decoding, MAX_NEW_TOKENS, batch_size=2) == expected


# ---------------------------------------------------------------------------------------------
# 4. one masked decoding step asks what training asked

QUESTION, ANSWER = "w2 w3 w4", "w5 w6 w7"


def masked_training_batch(objective, tokenizer, masked_from_end: list[int]):
    """The collated training batch of the row QUESTION -> ANSWER (it ends ... w6 w7 </s>) whose draw
    masks exactly the positions `masked_from_end` counted from the row's end (1 = the EOS), found by
    trying the collator's seeds."""
    dataset = TokenizedDataset.from_rows(tokenizer, [{"prompt": QUESTION, "completion": ANSWER}])
    for seed in range(5000):
        batch = MFTCollator(objective, tokenizer, seed=seed)([dataset[0]])
        length = batch["input_ids"].shape[1]
        masked = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        if masked == sorted(length - k for k in masked_from_end):
            return batch
    raise AssertionError(f"no seed masks exactly {masked_from_end} from the row's end")


def training_logits(model, batch) -> torch.Tensor:
    mask = torch.zeros(batch["attention_mask"].shape).masked_fill(~batch["attention_mask"],
                                                                  torch.finfo(torch.float32).min)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=mask).logits[0]


@pytest.mark.parametrize("shift,keep_sink,predict_prompt", [
    (False, False, True),   # from-scratch models: the logits at the slot predict it
    (True, False, True),    # shifted: the logits one position left of the slot predict it
    (True, True, False),    # as on pretrained models: shifted, the first token kept causal (the sink)
])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_a_masked_decoding_step_computes_the_training_logits(word_tokenizer, shift, keep_sink, predict_prompt,
                                                             attn_implementation):
    tokenizer = word_tokenizer
    model = tiny_llama(tokenizer, seed=1, attn_implementation=attn_implementation).eval()
    objective = MLMU(shift=shift, keep_sink=keep_sink, predict_prompt=predict_prompt)
    answer = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]

    # Training: the answer masked from its last token w7 on (w7 and the EOS after it, which a decoding
    # step cannot see either); the logits at the position whose label is w7.
    batch = masked_training_batch(objective, tokenizer, masked_from_end=[1, 2])
    labels = batch["labels"][0]
    assert (labels != IGNORE).sum() == 2
    (position,) = (labels == answer[-1]).nonzero().flatten().tolist()
    training = training_logits(model, batch)

    # Decoding: the question and the answer but its last token, then one slot; its first step's logits.
    prompt = encode_prompt(tokenizer, QUESTION) + answer[:-1]
    seen = []
    hook = model.register_forward_hook(lambda module, inputs, output: seen.append(output.logits.detach().clone()))
    try:
        decoded = generate_masked(model, tokenizer, [prompt], max_new_tokens=1, shift=shift, keep_sink=keep_sink,
                                  slots_only=False)  # the whole logits, to compare with training's
    finally:
        hook.remove()
    slot = len(prompt)
    assert len(seen) == 1 and seen[0].shape[:2] == (1, slot + 1)

    # the same row up to the slot, the same position asked, the same numbers, the same answer
    assert batch["input_ids"][0, : slot + 1].tolist() == prompt + [tokenizer.mask_token_id]
    assert position == slot - int(shift)
    assert torch.allclose(seen[0][0, position], training[position], atol=1e-5)
    scores = training[position].clone()
    scores[banned_ids(tokenizer)] = float("-inf")
    token = int(scores.argmax())
    assert decoded == [[] if token == tokenizer.eos_token_id else [token]]

    # The comparison is sharp: a row that shows the EOS after the masked w7 gives other logits.
    eos_visible = masked_training_batch(objective, tokenizer, masked_from_end=[2])
    assert eos_visible["input_ids"][0, : slot + 1].tolist() == prompt + [tokenizer.mask_token_id]
    assert not torch.allclose(training_logits(model, eos_visible)[position], training[position], atol=1e-3)
