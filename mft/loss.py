"""The loss: a weighted cross-entropy over the predicted positions, with the LM head run only there.

Every objective writes, for each position i of a row, a label y_i (IGNORE where nothing is
predicted) and a weight w_i. For one micro-batch `MFTLoss` returns the per-position terms

    l_i = w_i * CE(head(h_i), y_i)   where y_i != IGNORE,   0 elsewhere,

where h_i is the model's final hidden state at i and head its output projection (the LM head).
The trainer divides their sum by the total weight of the optimizer step (`mft.trainer`).

Logits only where a loss is taken. A masked objective predicts a fraction of the positions and a
reconstruction objective only its target, yet a causal LM's forward computes vocabulary-sized
logits everywhere. During training `MFTLoss` lets the model run up to its final hidden states,
keeps the hidden states of the predicted positions, and applies the head to them in chunks of
`chunk_size`: the same numbers as the full path (a test checks loss and gradients), without the
[batch, length, vocab] tensor. The model is still called as a whole, through whatever wraps it
(DDP, DeepSpeed, FSDP, PEFT): a pre-hook on the head keeps the hidden states and hands the head an
empty slice, so that the wrappers see an ordinary forward (calling the backbone directly would
bypass DDP's gradient synchronisation). `full_logits=True` restores the straightforward path.
(Written by hand: transformers' `logits_to_keep` keeps the same columns for every row.) On a GPU
the head and the cross-entropy of the kept positions can instead run as one fused kernel from a
library, `loss_kernel`: cut-cross-entropy (`cce`) or liger-kernel (`liger`), which never build the
[positions, vocab] logits either; "auto" takes one of them when it is installed and the hidden
states are on a GPU, else the chunked path.

No gradient through the prompt (`prompt_without_gradient`, opt-in): each row's prompt runs once
under `torch.no_grad()` into a key/value cache and only the rest runs with gradient.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from .errors import RecipeError
from .objectives import IGNORE


class MFTLoss:
    """Per-position weighted cross-entropy of a model's predictions (see the module docstring).

    `loss(model, inputs, labels, weights, selected_only=True)` runs `model(**inputs)` once and
    returns (l [B, L], the model's outputs). With `selected_only` the LM head runs only at the
    positions whose label is not IGNORE (the outputs then carry no logits); otherwise the model's
    own logits are used."""

    def __init__(self, chunk_size: int = 2048, kernel: str = "auto"):
        if chunk_size < 1:
            raise RecipeError(f"logits_chunk_size = {chunk_size}; use a positive number of positions")
        check_loss_kernel(kernel)
        self.chunk_size, self.kernel = chunk_size, kernel

    def __call__(self, model, inputs: dict[str, torch.Tensor], labels: torch.Tensor, weights: torch.Tensor,
                 *, selected_only: bool = True, unwrapped=None):
        head = output_head(unwrapped if unwrapped is not None else model) if selected_only else None
        if head is None:
            outputs = model(**inputs)
            return weighted_position_losses(outputs.logits, labels, weights), outputs
        with keep_predicted_hidden_states(head, labels != IGNORE) as kept:
            outputs = model(**inputs)
        return selected_position_losses(head, kept.hidden, labels, weights, self.chunk_size, self.kernel), outputs


def output_head(model) -> torch.nn.Module | None:
    """The model's LM head when its output is the logits as they are (no scaling or soft-capping
    after it, which the selected path would skip); None otherwise."""
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if isinstance(head, torch.nn.Module) else None


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
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or "position_ids" in inputs:
        raise RecipeError("training.prompt_gradient = false needs causal rows, one example per row (a 2D attention "
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
        raise RecipeError(f"training.prompt_gradient = false: {type(model).__name__} returned no key/value cache; "
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


# The fused linear cross-entropy kernels `loss_kernel` may name: (module, pip package).
LOSS_KERNELS = {"cce": ("cut_cross_entropy", "cut-cross-entropy"), "liger": ("liger_kernel", "liger-kernel")}


def check_loss_kernel(kernel: str, on_gpu: bool | None = None) -> None:
    """A kernel the recipe names must be one mft knows, installed, and (for the fused ones) on a GPU."""
    import importlib.util

    if kernel not in ("auto", "chunked", *LOSS_KERNELS):
        raise RecipeError(f"training.loss_kernel = {kernel!r}; use auto, chunked, liger or cce")
    if kernel in LOSS_KERNELS:
        module, package = LOSS_KERNELS[kernel]
        if importlib.util.find_spec(module) is None:
            raise RecipeError(f"training.loss_kernel = {kernel} needs the {package} package (pip install {package}); "
                              f"or use loss_kernel: auto, which falls back to the chunked path")
        if on_gpu is False:
            raise RecipeError(f"training.loss_kernel = {kernel} runs only on a GPU; use loss_kernel: auto or chunked on CPU")


def resolve_loss_kernel(kernel: str, device: torch.device) -> str:
    """The kernel that runs: `auto` is cce, else liger, when installed and on a GPU, else chunked."""
    import importlib.util

    if kernel != "auto":
        return kernel
    if device.type == "cuda":
        for name, (module, _) in LOSS_KERNELS.items():
            if importlib.util.find_spec(module) is not None:
                return name
    return "chunked"


def fused_token_losses(kernel: str, head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N] CE(head(h_i), y_i) by a library's fused linear cross-entropy kernel (no [N, vocab] logits)."""
    weight, bias = head.weight, getattr(head, "bias", None)
    if kernel == "cce":
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(hidden, weight, targets, bias=bias, reduction="none").float()
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(hidden, weight, targets, bias=bias, reduction="none")
    out = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)
    return out.float()


def selected_position_losses(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                             weights: torch.Tensor, chunk_size: int = 2048, kernel: str = "chunked") -> torch.Tensor:
    """[B, L]: w_i * CE(head(h_i), labels_i) at the selected positions (labels != IGNORE), 0 elsewhere,
    from their hidden states h ([N, hidden]). `kernel` "chunked": the head runs on at most
    `chunk_size` positions at a time; with more than one chunk each chunk is checkpointed (its logits
    recomputed in backward). "cce" / "liger" (or "auto" resolving to one): a fused kernel, used when
    the head is a plain linear layer (a LoRA-wrapped or sharded head takes the chunked path)."""
    selected = labels != IGNORE
    targets = labels[selected].to(hidden.device)
    kernel = resolve_loss_kernel(kernel, hidden.device)
    if kernel in LOSS_KERNELS and type(head) is torch.nn.Linear and head.weight.dim() == 2:
        token_loss = fused_token_losses(kernel, head, hidden, targets)
        return torch.zeros(labels.shape, dtype=token_loss.dtype, device=token_loss.device).masked_scatter(
            selected.to(token_loss.device), token_loss * weights[selected].to(token_loss.device))

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
