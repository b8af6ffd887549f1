"""mft: fine-tuning with masked, factorization-agnostic objectives (and the baselines they beat).

The names below are imported on first use (PEP 562), so that `import mft` or `import mft.objectives`
stays light: the objectives are pure torch, and only the trainer needs `transformers.Trainer`.
The layers, and what each module owns: docs/ARCHITECTURE.md.
"""

import importlib
import logging

# bitsandbytes warns at import, on every run, that it could not fetch an optional CPU kernel from
# the Hub (the `kernels` package); its built-in fallback is used and QLoRA works, so say nothing.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# On CPUs with AVX512-BF16 that fetch goes through `kernels`, which in offline mode (HF_HUB_OFFLINE)
# warns that it cannot check the kernel's publisher: a second stray line before any of mft's one-line
# errors, about a kernel mft never asked for. Only that message is dropped.
logging.getLogger("kernels._internals.hf_hub").addFilter(lambda record: "publisher trust check" not in record.getMessage())

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "MFTError": "errors", "RecipeError": "errors", "HubError": "errors",
    "AR": "objectives", "ARReverse": "objectives", "ARReverseEntity": "objectives", "ARReverseSegment": "objectives",
    "MLM": "objectives", "MLMU": "objectives", "PLM": "objectives", "MaskedReconstruct": "objectives",
    "MaskedSFT": "objectives", "Mixture": "objectives", "OBJECTIVES": "objectives", "build_objective": "objectives",
    "MFTCollator": "collator", "SFTRowsCollator": "collator",
    "MFTConfig": "training_args", "ModelConfig": "config", "load_recipe": "config",
    "MFTLoss": "loss", "weighted_token_loss": "loss",
    "MFTLossMixin": "trainer", "MFTMixin": "trainer", "MFTTrainer": "trainer", "QASet": "eval",
    "DecodingSpec": "decoding", "TrainedModel": "inference", "load": "inference", "merge": "inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # the next access is an ordinary attribute
        return value
    raise AttributeError(f"module 'mft' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
