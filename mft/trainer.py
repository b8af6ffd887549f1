"""`MFTTrainer`: a transformers `Trainer` whose loss comes from the objective's labels and weights.

Three jobs, each in its own mixin so that any `Trainer` subclass can take them
(`class MaskedSFTTrainer(MFTMixin, SFTTrainer)`, see examples/trl_sft_masked.py):

    MFTLossMixin           the loss below (this module; the per-position terms: `mft.loss.MFTLoss`)
    QAEvaluationMixin      forward/backward questions answered by generation (`mft.eval`)
    AtomicCheckpointMixin  checkpoints renamed into place once complete (`mft.checkpoints`)

The loss of one optimizer step is the weighted mean over every predicted position of every
micro-batch (gradient accumulation) on every process:

    loss = sum_i w_i * CE(logits_i, labels_i) / W,      W = sum_i w_i over the whole step

`get_batch_samples` computes W (summed over the accumulated micro-batches and gathered across
processes) before the first micro-batch runs, so each micro-batch contributes
sum_{i in micro-batch} w_i CE_i / W and the accumulated gradient is exactly the gradient of the
step's loss: accumulating k micro-batches of size b equals one batch of size k*b. Under data
parallelism the per-process loss is multiplied by the number of processes because DDP / DeepSpeed
average gradients across processes.

No gradient through the prompt (opt-in, `prompt_gradient=False`). A reconstruction row is a prompt
(the masked copy) as long as the target, and the exact gradient needs a backward pass through both.
With the option each row's prompt runs once under `torch.no_grad()` into a key/value cache and only
the rest runs with gradient: the same loss, a gradient that treats the prompt's keys and values as
constants (see `mft.loss.prompt_without_gradient`). Measured (BENCHMARKS.md): masked_reconstruct's
step falls from ~2.2x to ~1.4x ar, but the model no longer learns the reversal (backward exact
match 0.67 -> 0.07 on the SmolLM2 facts recipe). Hence off by default.

Everything else is the Trainer's: optimizer, schedule, logging (`report_to`), checkpoint contents,
`resume_from_checkpoint`, seeds.
"""

from __future__ import annotations

import math

import torch
from transformers import Trainer, TrainerCallback

from .checkpoints import AtomicCheckpointMixin
from .training_args import mft_option
from .errors import RecipeError
from .eval import QAEvaluationMixin, QASet
from .loss import MFTLoss, cache_argument, prompt_without_gradient, weighted_token_loss
from .models.attention import (TokenRule, anneal_to_bidirectional, attention_implementation, masked_gqa_without_copies,
                               to_model_mask)

__all__ = ["MFTLossMixin", "MFTMixin", "MFTTrainer", "QASet", "weighted_token_loss"]


class _DatasetEpoch(TrainerCallback):
    """Tell the training dataset which epoch starts, so each epoch draws fresh, reproducible masks.

    (The Trainer's own `set_epoch` reaches the sampler, not always the dataset.) `state.epoch` is
    the float progress; at the start of epoch e, also when resuming inside it, its floor is e."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-6))


class MFTLossMixin:
    """mft's loss (see the module docstring) for any `transformers.Trainer` subclass; the batches
    must come from an `MFTCollator`. Options read from the arguments when they are there
    (`MFTConfig`), else MFTConfig's defaults: `attention_anneal_steps`, `full_logits`,
    `logits_chunk_size`, `prompt_gradient`."""

    loss_is_scaled_for_ga = True  # compute_loss normalises by the whole step's weight itself

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_DatasetEpoch(self.train_dataset))
        self._attn_implementation = attention_implementation(self.model)
        self.token_loss = MFTLoss(mft_option(self.args, "logits_chunk_size"), mft_option(self.args, "loss_kernel"))
        self._cache_argument = None if mft_option(self.args, "prompt_gradient") else cache_argument(self.model)
        # [loss sum, weight sum] of each mixture component since the last log, on this process
        self._component_losses = torch.zeros(0, 2)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches and W, their total weight over all processes."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        if any("loss_weights" not in batch for batch in batches):
            raise RecipeError("MFTTrainer's loss needs batches with loss_weights, as MFTCollator makes them; pass "
                              "data_collator=MFTCollator(objective, tokenizer)")
        total_weight = sum(batch["loss_weights"].sum() for batch in batches).to(device)
        if self.args.world_size > 1:
            total_weight = self.accelerator.gather(total_weight.reshape(1)).sum()
        return batches, total_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # 1. What each position predicts (labels), with what weight, and which component made each row.
        labels, weights = inputs.pop("labels"), inputs.pop("loss_weights")
        sources = inputs.pop("source_ids", None)
        training = model.training and not return_outputs
        # 2. The attention the rows ask for, in the form the model's attention implementation takes.
        inputs = self._attention_inputs(inputs, annealing=model.training)
        # 3. (opt-in) Each row's prompt once, without gradient, into a key/value cache.
        if training and not mft_option(self.args, "prompt_gradient"):
            inputs, labels, weights = prompt_without_gradient(model, inputs, labels, weights, self._cache_argument)
        # 4. l_i = w_i * CE_i at every predicted position, the LM head only there while training.
        unwrapped = self.accelerator.unwrap_model(model)
        with masked_gqa_without_copies(unwrapped, inputs["attention_mask"]):
            per_position, outputs = self.token_loss(model, inputs, labels, weights, unwrapped=unwrapped,
                                              selected_only=training and not mft_option(self.args, "full_logits"))
        if sources is not None and training:
            self._record_component_losses(per_position.detach(), weights, sources)
        # 5. Divided by W, the step's total weight (a lone batch: its own).
        if num_items_in_batch is None:
            loss = per_position.sum() / weights.sum().clamp_min(1e-12)
        else:
            loss = per_position.sum() / num_items_in_batch.clamp_min(1e-12)
            if self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _attention_inputs(self, inputs: dict, annealing: bool) -> dict:
        """The batch's bool masks as the model's attention implementation takes them, after the
        annealing from causal attention when it is on (`attention_anneal_steps`). A batch made for
        flex_attention carries its per-token rule (`attention_rule`), which becomes a block mask."""
        anneal_steps = mft_option(self.args, "attention_anneal_steps")
        annealing = bool(annealing and anneal_steps and self.state.global_step < anneal_steps)
        progress = self.state.global_step / anneal_steps if annealing else 1.0
        rule = inputs.pop("attention_rule", None)
        if rule is not None:
            inputs["attention_mask"] = TokenRule(
                **rule, anneal=(progress, self._anneal_seed()) if annealing else None).block_mask()
            return inputs
        if annealing:
            inputs["attention_mask"] = anneal_to_bidirectional(inputs["attention_mask"], progress, self._anneal_seed())
        for name in ("attention_mask", "query_attention_mask"):  # the query stream: two-stream models (PLM)
            if name in inputs:
                inputs[name] = to_model_mask(inputs[name], self._attn_implementation, self.model.dtype)
        return inputs

    def _anneal_seed(self) -> int:
        """The annealing draw of this optimizer step (the same on every process and micro-batch)."""
        return self.args.seed * 1_000_003 + self.state.global_step

    def _record_component_losses(self, per_position, weights, sources) -> None:
        """Add each mixture component's weighted loss and weight to the sums kept until the next log
        (from the losses already computed: no second pass, no synchronisation per step)."""
        sources = sources.to(per_position.device)  # [B, L]: the component of each token, -1 on padding
        if len(self._component_losses) != len(self._component_names):
            self._component_losses = torch.zeros(len(self._component_names), 2)
        sums = torch.zeros(len(self._component_names), 2, device=per_position.device)
        sums[:, 0].index_add_(0, sources[sources >= 0], per_position[sources >= 0].float())
        sums[:, 1].index_add_(0, sources[sources >= 0], weights.to(per_position.device)[sources >= 0].float())
        self._component_losses = self._component_losses.to(sums.device) + sums

    @property
    def _component_names(self) -> list[str]:
        return list(getattr(getattr(self.data_collator, "objective", None), "component_names", None) or [])

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Adds `loss_<component>` for mixtures: each component's weighted mean loss since the last
        log, over every process (the sums are gathered here, once per log)."""
        if "loss" in logs and len(self._component_losses):
            sums = self._component_losses
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum")
            for name, (loss_sum, weight_sum) in zip(self._component_names, sums.tolist()):
                if weight_sum > 0:
                    logs[f"loss_{name}"] = loss_sum / weight_sum
            self._component_losses = torch.zeros_like(self._component_losses)
        super().log(logs, *args, **kwargs)


class MFTMixin(MFTLossMixin, QAEvaluationMixin, AtomicCheckpointMixin):
    """Everything mft adds to a Trainer: the loss, QA evaluation, atomic checkpoints."""


class MFTTrainer(MFTMixin, Trainer):
    """A `transformers.Trainer` whose loss comes from the objective's labels and weights."""
