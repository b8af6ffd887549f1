"""`MFTTrainer`: a transformers `Trainer` whose loss comes from the objective's labels and weights.

The loss, its logging and the QA evaluation live in `MFTLossMixin`, which works with any `Trainer`
subclass: `MFTTrainer` is `MFTLossMixin` + `Trainer`, and e.g. `class MaskedSFTTrainer(MFTLossMixin,
SFTTrainer)` gives TRL's SFTTrainer the same loss (see examples/trl_sft_masked.py).

The loss of one optimizer step is the weighted mean over every predicted position of every
micro-batch (gradient accumulation) on every process:

    loss = sum_i w_i * CE(logits_i, labels_i) / sum_i w_i

`get_batch_samples` computes the denominator (the total weight, summed over the accumulated
micro-batches and gathered across processes) before the first micro-batch runs, so each micro-batch
contributes  sum_{i in micro-batch} w_i CE_i / total  and the accumulated gradient is exactly the
gradient of the step's loss: accumulating k micro-batches of size b equals one batch of size k*b.
Under data parallelism the per-process loss is multiplied by the number of processes because DDP /
DeepSpeed average gradients across processes.

Logits only where a loss is taken. A masked objective predicts a fraction of the positions and a
reconstruction objective only its target, yet a causal LM's forward computes vocabulary-sized
logits everywhere. During training mft lets the model run up to its final hidden states, keeps the
hidden states h_i of the predicted positions (labels != IGNORE), and applies the LM head to them in
chunks of `logits_chunk_size`: the same numbers as the full path (a test checks loss and gradients),
without the [batch, length, vocab] tensor. `full_logits=True` restores the straightforward path.
(Written by hand: transformers' `logits_to_keep` keeps the same columns for every row, and the fused
linear cross-entropy kernels we know of need a GPU.)

No gradient through the prompt (opt-in, `prompt_gradient=False`). A reconstruction row is a prompt
(the masked copy) as long as the target, and the exact gradient needs a backward pass through both.
With the option each row's prompt (the positions before its first predicted token) runs once under
`torch.no_grad()` into a key/value cache and only the rest runs with gradient: the same loss, a
gradient that treats the prompt's keys and values as constants (see `prompt_without_gradient`).
Measured (BENCHMARKS.md): masked_reconstruct's step falls from ~2.2x to ~1.4x ar, but the model no
longer learns the reversal (backward exact match 0.67 -> 0.07 on the SmolLM2 facts recipe): the
backward answers are learnt through the masked copy's representations. Hence off by default.

Checkpoints are atomic: each is written into `OUTPUT_DIR/.checkpoint-staging/` and renamed to
`checkpoint-N` only once complete, so a run killed while saving leaves its previous checkpoint as the
last one, and `resume_from_checkpoint` never picks up a half-written folder. (Written by hand: the
Trainer writes checkpoint-N in place.)

Everything else is the Trainer's: optimizer, schedule, logging (`report_to`), checkpoint contents,
`resume_from_checkpoint`, seeds. Evaluation on a `QASet` (forward/backward questions) is by
generation, see `mft.eval`; any other eval dataset gets the Trainer's usual loss evaluation.
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .config import MFTConfig
from .eval import evaluate_qa, flatten_metrics
from .models.attention import (anneal_to_bidirectional, attention_implementation, masked_gqa_without_copies,
                               to_model_mask)
from .objectives import IGNORE, default_decoding


STAGING_DIR = ".checkpoint-staging"


class QASet(list):
    """Evaluation questions: a list of {"question", "answer", "direction"} answered by generation."""


class _DatasetEpoch(TrainerCallback):
    """Tell the training dataset which epoch starts, so each epoch draws fresh, reproducible masks.

    (The Trainer's own `set_epoch` reaches the sampler, not always the dataset.) `state.epoch` is
    the float progress; at the start of epoch e, also when resuming inside it, its floor is e."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-6))


class MFTLossMixin:
    """mft's loss, logging and QA evaluation for any `transformers.Trainer` subclass.

    Put it first among the bases, `class MyTrainer(MFTLossMixin, SomeTrainer)`, so that its
    `compute_loss`, `get_batch_samples`, `log` and `evaluate` come before the trainer's own; the
    batches must come from an `MFTCollator`. `MFTTrainer` is `MFTLossMixin` on the plain `Trainer`.
    Options read from the arguments when they are there (`MFTConfig`): `decoding`, `max_new_tokens`,
    `attention_anneal_steps`.
    """

    loss_is_scaled_for_ga = True  # compute_loss normalises by the whole step's weight itself

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_DatasetEpoch(self.train_dataset))
        self._attn_implementation = attention_implementation(self.model)
        self._component_losses: dict[str, list[float]] = {}  # mixture component -> [loss sum, weight sum]
        self._staging = False  # True while a checkpoint is being written (see _save_checkpoint)
        self._cache_argument = None if getattr(self.args, "prompt_gradient", True) else cache_argument(self.model)

    # -- atomic checkpoints ------------------------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written into the staging folder (every process writes its part
        there), then renamed into place by the main process: a checkpoint-N folder is always complete."""
        run_dir = self._get_output_dir(trial)
        staging = os.path.join(run_dir, STAGING_DIR)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left behind
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            final = os.path.join(run_dir, name)
            best = self.state.best_model_checkpoint
            if best and os.path.abspath(best) == os.path.abspath(os.path.join(staging, name)):
                self.state.best_model_checkpoint = final  # where it will be, also in its saved state
                self.state.save_to_json(os.path.join(staging, name, TRAINER_STATE_NAME))
            if os.path.isdir(final):  # the same step saved twice (e.g. after a resume): keep the newer
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    # -- loss --------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        total_weight = None
        if batches and "loss_weights" in batches[0]:
            total_weight = sum(batch["loss_weights"].sum() for batch in batches).to(device)
            if self.args.world_size > 1:
                total_weight = self.accelerator.gather(total_weight.reshape(1)).sum()
        return batches, total_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        weights = inputs.pop("loss_weights")
        sources = inputs.pop("source_ids", None)
        anneal_steps = getattr(self.args, "attention_anneal_steps", 0)
        if anneal_steps and model.training and self.state.global_step < anneal_steps:
            generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step)
            inputs["attention_mask"] = anneal_to_bidirectional(
                inputs["attention_mask"], self.state.global_step / anneal_steps, generator)
        inputs["attention_mask"] = to_model_mask(inputs["attention_mask"], self._attn_implementation,
                                                 self.model.dtype)
        if "query_attention_mask" in inputs:  # two-stream models (PLM)
            inputs["query_attention_mask"] = to_model_mask(inputs["query_attention_mask"], self._attn_implementation,
                                                           self.model.dtype)
        if model.training and not return_outputs and not getattr(self.args, "prompt_gradient", True):
            inputs, labels, weights = prompt_without_gradient(model, inputs, labels, weights, self._cache_argument)
        selected_only = model.training and not return_outputs and not getattr(self.args, "full_logits", False)
        head = self._output_head(model) if selected_only else None
        no_copies = masked_gqa_without_copies(self.accelerator.unwrap_model(model), inputs["attention_mask"])
        if head is None:
            with no_copies:
                outputs = model(**inputs)
            per_position = weighted_position_losses(outputs.logits, labels, weights)
        else:
            with no_copies, keep_predicted_hidden_states(head, labels != IGNORE) as kept:
                outputs = model(**inputs)
            per_position = selected_position_losses(head, kept.hidden, labels, weights,
                                                    getattr(self.args, "logits_chunk_size", 2048))
        weighted_sum = per_position.sum()
        if sources is not None and model.training:
            self._record_component_losses(per_position.detach(), weights, sources)
        if num_items_in_batch is None:  # a lone batch (evaluation, or a caller outside train())
            loss = weighted_sum / weights.sum().clamp_min(1e-12)
        else:
            loss = weighted_sum / num_items_in_batch.clamp_min(1e-12)
            if self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _output_head(self, model):
        """The LM head when its output is the logits as they are (no scaling or soft-capping after
        it, which the selected path would skip); None otherwise."""
        unwrapped = self.accelerator.unwrap_model(model)
        config = getattr(unwrapped, "config", None)
        if any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
            return None
        head = unwrapped.get_output_embeddings() if hasattr(unwrapped, "get_output_embeddings") else None
        return head if isinstance(head, torch.nn.Module) else None

    def _record_component_losses(self, per_position, weights, sources) -> None:
        """Accumulate each mixture component's weighted loss until the next log (from the losses
        already computed for the step: no second pass over the vocabulary)."""
        for index, name in enumerate(self.data_collator.objective.component_names):
            rows = sources == index
            if rows.any():
                sums = self._component_losses.setdefault(name, [0.0, 0.0])
                sums[0] += per_position[rows].sum().item()
                sums[1] += weights[rows].sum().item()

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._component_losses:
            for name, (loss_sum, weight_sum) in self._component_losses.items():
                if weight_sum > 0:
                    logs[f"loss_{name}"] = loss_sum / weight_sum
            self._component_losses = {}
        super().log(logs, *args, **kwargs)

    # -- evaluation --------------------------------------------------------------------------------

    @property
    def decoding(self) -> str:
        if getattr(self.args, "decoding", None):
            return self.args.decoding
        objective = getattr(self.data_collator, "objective", None)
        return default_decoding(objective) if objective is not None else "causal"

    def evaluate_qa(self, qa: list[dict[str, str]], predictions: list | None = None) -> dict[str, dict[str, Any]]:
        model = self.accelerator.unwrap_model(self.model)
        objective = getattr(self.data_collator, "objective", None)
        max_new_tokens = getattr(self.args, "max_new_tokens", MFTConfig.max_new_tokens)
        return evaluate_qa(model, self.processing_class, qa, self.decoding, max_new_tokens,
                           self.args.per_device_eval_batch_size, shift=getattr(objective, "shift", False),
                           keep_sink=getattr(objective, "keep_sink", False), predictions=predictions)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(dataset, QASet):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        results = self.evaluate_qa(dataset)
        metrics = flatten_metrics(results, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class MFTTrainer(MFTLossMixin, Trainer):
    """A `transformers.Trainer` whose loss comes from the objective's labels and weights."""


def prompt_lengths(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B]: each row's prompt length, the index of its first predicted position (labels != IGNORE);
    a row that predicts nothing is all prompt."""
    predicted = labels != IGNORE
    return torch.where(predicted.any(dim=1), predicted.float().argmax(dim=1), attention_mask.sum(dim=1))


def prompt_without_gradient(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor, weights: torch.Tensor,
                            cache_keyword: str = "cache") -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """`training.prompt_gradient: false`: (inputs, labels, weights) for the part of each row after
    its prompt, whose forward attends to the prompt's keys and values computed without gradient.

    Row b = prompt x_0..x_{p_b-1} + rest x_{p_b}..x_{n_b-1}. The prompts run first under
    `torch.no_grad()`, right-padded to P = max p_b columns, keeping their keys and values in a cache;
    the rests follow, right-padded to R = max (n_b - p_b) columns, at positions p_b, p_b+1, ..., each
    attending causally to its own row's cached prompt (the padding mask hides the other columns)
    and to the rest before it. The rest's hidden states, hence the loss, are the full pass's; the
    gradient differs: the prompt's keys and values count as constants, so the weights learn only
    through the predicted part. The backward pass, and the activations kept for it, cover R columns
    instead of the row's n_b.

    Needs a causal LM that takes a cache (forward argument `cache_keyword`, see `cache_argument`) and
    a 2D padding mask: causal rows, one example per row. (Written by hand: no library splits a training step this way.)"""
    mask = inputs["attention_mask"]
    if mask.dim() != 2 or "position_ids" in inputs:
        raise ValueError("training.prompt_gradient = false needs causal rows, one example per row (a 2D attention "
                         "mask); use a causal objective without packing, or set prompt_gradient: true")
    ids = inputs["input_ids"]
    lengths = mask.sum(dim=1)
    prompts = prompt_lengths(labels, mask)
    prompt_columns, rest_columns = int(prompts.max()), int((lengths - prompts).max())
    if prompt_columns == 0:
        return inputs, labels, weights
    prompt_mask = (torch.arange(prompt_columns, device=ids.device)[None] < prompts[:, None]).to(mask.dtype)
    with torch.no_grad():
        prompt = model(input_ids=ids[:, :prompt_columns], attention_mask=prompt_mask, use_cache=True, logits_to_keep=1)
    cache = getattr(prompt, "cache", None)
    if cache is None:
        cache = getattr(prompt, "past_key_values", None)
    if cache is None:
        raise ValueError(f"training.prompt_gradient = false: {type(model).__name__} returned no key/value cache; "
                         f"set prompt_gradient: true")

    positions = prompts[:, None] + torch.arange(rest_columns, device=ids.device)[None]  # [B, R]
    valid = positions < lengths[:, None]
    taken = positions.clamp(max=ids.shape[1] - 1)
    rest = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    rest.update(input_ids=ids.gather(1, taken), attention_mask=torch.cat([prompt_mask, valid.to(mask.dtype)], dim=1),
                position_ids=positions, use_cache=False)
    rest[cache_keyword] = cache
    rest_labels = torch.where(valid, labels.gather(1, taken), IGNORE)
    rest_weights = torch.where(valid, weights.gather(1, taken), 0.0)
    return rest, rest_labels, rest_weights


def cache_argument(model) -> str:
    """The forward argument that takes a key/value cache: `cache` (transformers >= 5.2x), else
    `past_key_values`. Asked of the model under a PEFT wrapper, which passes keywords through."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def weighted_position_losses(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B, L]: w_i * CE(logits_i, labels_i) where the label is not IGNORE, 0 elsewhere."""
    selected = labels != IGNORE
    token_loss = F.cross_entropy(logits[selected].float(), labels[selected], reduction="none")
    return torch.zeros(labels.shape, dtype=token_loss.dtype, device=token_loss.device).masked_scatter(
        selected, token_loss * weights[selected])


class keep_predicted_hidden_states:
    """Context manager: while the model runs, the LM head receives no positions (its output is an
    empty [batch, 0, vocab] tensor) and the hidden states of the `selected` [batch, length]
    positions are kept in `.hidden` ([N, hidden], row-major order, as `tensor[selected]`)."""

    def __init__(self, head: torch.nn.Module, selected: torch.Tensor):
        self.head, self.selected, self.hidden = head, selected, None

    def _hook(self, module, args, kwargs):
        hidden_states = args[0]
        self.hidden = hidden_states[self.selected.to(hidden_states.device)]
        return (hidden_states[:, :0],) + tuple(args[1:]), kwargs

    def __enter__(self):
        self.handle = self.head.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        if exc[0] is None and self.hidden is None:
            raise RuntimeError("the model never called its output embeddings; set training.full_logits: true")


def selected_position_losses(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                             weights: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """[B, L]: w_i * CE(head(h_i), labels_i) at the selected positions (labels != IGNORE), 0 elsewhere,
    from their hidden states h ([N, hidden]). The head runs on at most `chunk_size` positions at a
    time; with more than one chunk each chunk is checkpointed (its logits recomputed in backward)."""
    selected = labels != IGNORE
    targets = labels[selected].to(hidden.device)

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="none")

    if hidden.shape[0] <= chunk_size:
        token_loss = chunk_loss(hidden, targets)
    else:
        token_loss = torch.cat([
            torch.utils.checkpoint.checkpoint(chunk_loss, h, y, use_reentrant=False)
            for h, y in zip(hidden.split(chunk_size), targets.split(chunk_size))
        ])
    return torch.zeros(labels.shape, dtype=token_loss.dtype, device=token_loss.device).masked_scatter(
        selected.to(token_loss.device), token_loss * weights[selected].to(token_loss.device))


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * CE(logits_i, labels_i) over the positions whose label is not IGNORE."""
    return weighted_position_losses(logits, labels, weights).sum()
