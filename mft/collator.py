"""The data collator: applies the objective to each example, then pads and batches the rows.

Masking happens here, on the CPU, so it runs inside DataLoader workers (`dataloader_num_workers`).

Randomness. When an example carries `example_index` and `epoch` (the `mft.data.TokenizedDataset`
adds them), its draws come from a generator seeded by (seed, epoch, example_index): the same example
gets the same mask in the same epoch whatever the batch, worker, process or resumption, and a fresh
mask in every new epoch. Without them (the collator used alone in another script) a collator-level
generator seeded once is used (re-keyed in each DataLoader worker).

Output batch (`Batch`):
    input_ids      [B, L]  padded with the pad token
    labels         [B, L]  aligned with the logits (see `mft.objectives.base`), IGNORE on padding
    loss_weights   [B, L]  float, 0 on padding
    attention_mask [B, L]  when every row is causal: the plain padding mask, so that the attention
                   kernels' causal fast paths (is_causal, flash-attention) stay on;
                   [B, 1, L, L] bool otherwise (see `mft.models.attention`), or the rows' own
                   custom masks where they bring one
    attention_rule {valid, segment, causal, hidden, sink, prompt}: [B, L] each, instead of a 4D
                   attention_mask when the collator is made with `attention="rule"` (flex_attention:
                   the trainer turns the rule into a block mask, see `mft.models.attention.TokenRule`)
    is_causal      False, with `attention="flash"` (flash_attention_2) when the rows are bidirectional:
                   the model's attention modules take it instead of a mask (packed: no mask at all,
                   position_ids tell the documents apart)
    query_attention_mask [B, 1, L, L] bool, when rows bring a query-stream mask (PLM); rows without
                   one get their attention mask without its diagonal (the two-stream model's rule)
    source_ids     [B, L]  mixtures only: the index of the component that made each token, -1 on padding

Packing (`pack_length=N`): the rows of a batch are laid one after another into rows of exactly N
tokens (first fit, in order), each attending only inside itself under its own rule (block-diagonal
4D mask, see `mft.models.attention.packed_attention_mask`) with position ids restarting at 0, so
the loss is the one of the unpacked batch (a test checks) and no compute goes to padding between
short documents. The batch then also carries
    position_ids   [B', N] and B' <= B rows.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch

from .models.attention import packed_rule, rows_rule
from .objectives import IGNORE, Objective, Row, SpecialTokens, example_generator
from .objectives.autoregressive import next_token_row
from .errors import RecipeError


class Batch(TypedDict, total=False):
    """What `MFTCollator` returns (see the module docstring for each key's shape and meaning)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_weights: torch.Tensor
    attention_mask: torch.Tensor
    query_attention_mask: torch.Tensor
    position_ids: torch.Tensor
    source_ids: torch.Tensor


class MFTCollator:
    def __init__(self, objective: Objective, tokenizer=None, *, special: SpecialTokens | None = None,
                 pad_token_id: int | None = None, seed: int = 0, pad_to_multiple_of: int | None = None,
                 pack_length: int = 0, attention: str = "dense"):
        if special is None:
            if tokenizer is None:
                raise RecipeError("MFTCollator needs a tokenizer or SpecialTokens")
            special = SpecialTokens.from_tokenizer(tokenizer)
        if pad_token_id is None:
            pad_token_id = tokenizer.pad_token_id if tokenizer is not None else None
        if pad_token_id is None:
            pad_token_id = special.eos_token_id
        objective.setup(special, tokenizer)
        self.objective = objective
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pack_length = pack_length
        if attention not in ("dense", "rule", "flash"):
            raise RecipeError(f"MFTCollator attention = {attention!r}; use 'dense' (a [B, 1, L, L] mask, eager and sdpa), "
                              f"'rule' (per-token rule tensors for flex_attention) or 'flash' (flash_attention_2)")
        self.attention = attention
        self._fallback_generator = torch.Generator().manual_seed(seed)

    def generator(self, example: dict[str, Any]) -> torch.Generator:
        if "example_index" in example:
            return example_generator(self.seed, example.get("epoch", 0), example["example_index"])
        return self._worker_generator()

    def rows(self, example: dict[str, Any]) -> list[Row]:
        return self.objective(example, self.generator(example))

    def _worker_generator(self) -> torch.Generator:
        # Each DataLoader worker holds a copy of this collator; re-key the copy with the worker's own
        # seed (new per worker and per epoch) so that workers do not repeat each other's masks.
        info = torch.utils.data.get_worker_info()
        if info is not None and getattr(self, "_worker_seed", None) != info.seed:
            self._fallback_generator = example_generator(self.seed, info.seed)
            self._worker_seed = info.seed
        return self._fallback_generator

    def __call__(self, examples: list[dict[str, Any]]) -> Batch:
        regular = [example for example in examples if not example.get("next_token")]
        rows = self.objective.batch_rows(regular, [self.generator(example) for example in regular]) if regular else []
        # Replay examples (`mft.retention`) are next-token rows whatever the objective: they keep the
        # pretrained model's own skill, which is next-token prediction.
        rows += [next_token_row(torch.as_tensor(example["input_ids"], dtype=torch.long), 1) for example in examples
                 if example.get("next_token")]
        if self.pack_length:
            return self.pack(rows)
        return self.pad(rows)

    def flash_causal_flag(self, rows: list[Row]) -> bool:
        """flash_attention_2's one causal flag for the batch; rows it cannot express are refused."""
        for row in rows:
            if row.attention is not None or (not row.causal and (
                    row.sink or row.prompt_end or (row.hidden is not None and bool(row.hidden.any())))):
                raise RecipeError("flash_attention_2 sees every token of a row (hidden masked keys, a kept sink, a blocked "
                                  "prompt or a custom mask cannot be expressed); use model.attn_implementation: "
                                  "flex_attention or sdpa")
        kinds = {row.causal for row in rows}
        if len(kinds) > 1:
            raise RecipeError("flash_attention_2 takes one causal flag per batch, and this batch mixes causal and "
                              "bidirectional rows; set objective.per: batch, or use flex_attention or sdpa")
        return kinds.pop()

    def pad(self, rows: list[Row]) -> Batch:
        length = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE, dtype=torch.long)
        weights = torch.zeros((batch, length), dtype=torch.float)
        key_valid = torch.zeros((batch, length), dtype=torch.bool)
        hidden = torch.zeros((batch, length), dtype=torch.bool)
        prompt = torch.zeros((batch, length), dtype=torch.bool)
        for b, row in enumerate(rows):
            n = len(row)
            prompt[b, :row.prompt_end] = not row.causal
            input_ids[b, :n] = row.input_ids
            labels[b, :n] = row.labels
            weights[b, :n] = row.weights
            key_valid[b, :n] = True
            if row.hidden is not None:
                hidden[b, :n] = row.hidden
        causal = torch.tensor([row.causal for row in rows])
        custom = any(row.attention is not None for row in rows)
        if custom and self.attention == "rule":
            raise RecipeError("rows with their own attention masks (plm) have no per-token rule for flex_attention; "
                              "use model.attn_implementation: sdpa")
        flash_causal = self.flash_causal_flag(rows) if self.attention == "flash" else None  # refuses what it cannot run
        rule = None
        if (causal.all() and not custom) or self.attention == "flash":  # flash: the causal flag, below
            attention_mask = key_valid.long()
        else:
            rule = rows_rule(key_valid, causal, hidden, torch.tensor([row.sink for row in rows]), prompt)
            attention_mask = None if self.attention == "rule" else rule.dense()
        for b, row in enumerate(rows):
            if row.attention is not None:
                n = len(row)
                attention_mask[b, 0, :n, :n] = row.attention
        batch = {"input_ids": input_ids, "labels": labels, "loss_weights": weights}
        if attention_mask is None:
            batch["attention_rule"] = rule.tensors()
        else:
            batch["attention_mask"] = attention_mask
        if flash_causal is False:
            batch["is_causal"] = False
        names = getattr(self.objective, "component_names", None)
        if names:  # a mixture: which component made each token, for per-objective loss logs
            made_by = torch.tensor([names.index(row.source) if row.source in names else -1 for row in rows])
            batch["source_ids"] = torch.where(key_valid, made_by[:, None], -1)
        if any(row.query_attention is not None for row in rows):
            eye = torch.eye(length, dtype=torch.bool)
            query_mask = attention_mask & ~eye
            for b, row in enumerate(rows):
                if row.query_attention is not None:
                    n = len(row)
                    query_mask[b, 0] = False
                    query_mask[b, 0, :n, :n] = row.query_attention
            batch["query_attention_mask"] = query_mask
        return batch

    def pack(self, rows: list[Row]) -> Batch:
        length = self.pack_length
        bins: list[list[Row]] = []
        used: list[int] = []
        if any(row.attention is not None for row in rows):
            raise RecipeError("training.pack_length: rows with their own attention masks (plm) cannot be packed; "
                              "set pack_length: 0")
        for row in rows:  # first fit, in order
            if len(row) > length:
                raise RecipeError(f"a training row of {len(row)} tokens is longer than training.pack_length = "
                                  f"{length}; raise pack_length or shorten the data")
            target = next((i for i, n in enumerate(used) if n + len(row) <= length), None)
            if target is None:
                bins.append([])
                used.append(0)
                target = len(bins) - 1
            bins[target].append(row)
            used[target] += len(row)
        shape = (len(bins), length)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE, dtype=torch.long)
        weights = torch.zeros(shape, dtype=torch.float)
        position_ids = torch.zeros(shape, dtype=torch.long)
        segments = torch.full(shape, -1, dtype=torch.long)
        causal = torch.ones(shape, dtype=torch.bool)
        hidden = torch.zeros(shape, dtype=torch.bool)
        sink_start = torch.zeros(shape, dtype=torch.bool)
        prompt = torch.zeros(shape, dtype=torch.bool)
        names = getattr(self.objective, "component_names", None)
        sources = torch.full(shape, -1, dtype=torch.long)
        for b, packed in enumerate(bins):
            start = 0
            for index, row in enumerate(packed):
                span = slice(start, start + len(row))
                input_ids[b, span], labels[b, span], weights[b, span] = row.input_ids, row.labels, row.weights
                position_ids[b, span] = torch.arange(len(row))
                segments[b, span] = index
                causal[b, span] = row.causal
                if row.hidden is not None:
                    hidden[b, span] = row.hidden
                sink_start[b, start] = row.sink and not row.causal
                prompt[b, start:start + row.prompt_end] = not row.causal
                if names:
                    sources[b, span] = names.index(row.source) if row.source in names else -1
                start += len(row)
        batch = {"input_ids": input_ids, "labels": labels, "loss_weights": weights, "position_ids": position_ids}
        rule = packed_rule(segments, causal, hidden, sink_start, prompt)
        if self.attention == "flash":  # no mask: the variable-length path tells documents apart by position ids
            if not self.flash_causal_flag(rows):
                batch["is_causal"] = False
        elif self.attention == "rule":
            batch["attention_rule"] = rule.tensors()
        else:
            batch["attention_mask"] = rule.dense()
        if names:
            batch["source_ids"] = sources
        return batch


class SFTRowsCollator(MFTCollator):
    """`MFTCollator` for the rows TRL's `SFTTrainer` tokenizes: {"input_ids", "labels"}, the labels
    IGNORE on the prompt (`completion_only_loss`), or {"input_ids", "completion_mask"}. mft's
    objectives read a prompt length instead: the tokens before the first label (or the first 1 of
    `completion_mask`); 0 when every token is a label; with `assistant_only_loss` on a multi-turn
    chat, everything before the first assistant token. The labels themselves are not used (the
    objective makes its own); rows that carry `prompt_length` pass unchanged. A row with none of
    these is plain text, which an objective that reads the prompt (`predict_prompt: false`,
    masked_sft, a routed mixture) refuses: it would silently train something else."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self.example(row) for row in examples]
        if self.objective.reads_prompt and any("prompt_length" not in row for row in rows):
            raise RecipeError(f"objective {self.objective.name!r} needs to know where each row's prompt ends, but a "
                              f"row has no labels, completion_mask or prompt_length; tokenize prompt/completion rows "
                              f"with completion_only_loss (TRL's default for them)")
        return super().__call__(rows)

    @staticmethod
    def example(row: dict[str, Any]) -> dict[str, Any]:
        if "prompt_length" in row:
            return row
        if "labels" in row:
            marks, predicted = row["labels"], lambda label: label != IGNORE
        elif "completion_mask" in row:
            marks, predicted = row["completion_mask"], lambda mark: mark == 1
        else:
            return row
        marks = list(marks)
        prompt_length = next((i for i, mark in enumerate(marks) if predicted(mark)), len(marks))
        example = {key: value for key, value in row.items() if key not in ("labels", "completion_mask")}
        example["prompt_length"] = prompt_length
        return example
