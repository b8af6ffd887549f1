"""`training.loss_kernel` (issue 20): the fused linear cross-entropy kernels of cut-cross-entropy and
liger-kernel run on a GPU only (`benchmarks/gpu_check.sh` compares them there); here the chunked
path stays the CPU path, a kernel that cannot run is refused in one line, and the dispatch hands a
kernel the hidden states, the head's weight and the targets and weights its per-token losses. For
that a stand-in module computes the same per-token cross-entropy in plain PyTorch."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mft.config import load_recipe, validate_recipe
from mft.errors import RecipeError
from mft.loss import resolve_loss_kernel, selected_position_losses

ROOT = Path(__file__).resolve().parents[1]


def test_auto_is_the_chunked_path_on_cpu():
    assert resolve_loss_kernel("auto", torch.device("cpu")) == "chunked"
    assert resolve_loss_kernel("chunked", torch.device("cuda")) == "chunked"


@pytest.mark.parametrize("kernel", ["cce", "liger"])
def test_a_kernel_that_cannot_run_here_is_refused_in_one_line(kernel):
    with pytest.raises(RecipeError, match=f"training.loss_kernel = {kernel}") as refused:
        validate_recipe(load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"training.loss_kernel={kernel}"]))
    assert "\n" not in str(refused.value) and ("pip install" in str(refused.value) or "GPU" in str(refused.value))
    with pytest.raises(RecipeError, match="training.loss_kernel = .fast.* one of .auto., .chunked., .liger., .cce."):
        validate_recipe(load_recipe(ROOT / "recipes" / "quickstart.yaml", ["training.loss_kernel=fast"]))


@pytest.mark.parametrize("kernel", ["cce", "liger"])
def test_the_fused_path_weights_each_token_as_the_chunked_path(kernel, monkeypatch):
    seen = {}

    def per_token(hidden, weight, targets, bias=None, reduction="none"):
        seen.update(hidden=hidden, weight=weight, reduction=reduction)
        return F.cross_entropy(hidden @ weight.T + (0 if bias is None else bias), targets, reduction=reduction)

    if kernel == "cce":
        monkeypatch.setitem(sys.modules, "cut_cross_entropy", types.SimpleNamespace(linear_cross_entropy=per_token))
    else:
        functional = types.SimpleNamespace(liger_fused_linear_cross_entropy=lambda *a, **k: (per_token(*a, **k), None))
        monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
        monkeypatch.setitem(sys.modules, "liger_kernel.transformers", types.ModuleType("liger_kernel.transformers"))
        monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    labels = torch.randint(0, 50, (3, 7))
    labels[torch.rand(3, 7) < 0.4] = -100
    weights = torch.rand(3, 7) * (labels != -100)
    hidden = torch.randn(int((labels != -100).sum()), 16, requires_grad=True)
    fused = selected_position_losses(head, hidden, labels, weights, kernel=kernel)
    assert seen["reduction"] == "none" and seen["weight"] is head.weight and seen["hidden"] is hidden
    chunked = selected_position_losses(head, hidden, labels, weights, chunk_size=4, kernel="chunked")
    assert torch.allclose(fused, chunked, atol=1e-6)
    fused_gradient = torch.autograd.grad(fused.sum(), [hidden, head.weight])
    chunked_gradient = torch.autograd.grad(chunked.sum(), [hidden, head.weight])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused_gradient, chunked_gradient))
