"""mft: fine-tuning with masked, factorization-agnostic objectives (and the baselines they beat)."""

import logging

# bitsandbytes warns at import, on every run, that it could not fetch an optional CPU kernel from
# the Hub (the `kernels` package); its built-in fallback is used and QLoRA works, so say nothing.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .collator import MFTCollator, SFTRowsCollator
from .config import MFTConfig, ModelConfig, RecipeError, load_recipe
from .objectives import AR, MLM, MLMU, OBJECTIVES, PLM, ARReverse, ARReverseEntity, ARReverseSegment, build_objective
from .trainer import MFTLossMixin, MFTTrainer, QASet, weighted_token_loss

__version__ = "0.1.0"

__all__ = ["AR", "ARReverse", "ARReverseEntity", "ARReverseSegment", "MLM", "MLMU", "OBJECTIVES", "PLM", "MFTCollator", "MFTConfig", "MFTLossMixin", "MFTTrainer",
           "ModelConfig", "QASet", "RecipeError", "SFTRowsCollator", "build_objective", "load_recipe",
           "weighted_token_loss"]
