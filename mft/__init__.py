"""mft: fine-tuning with masked, factorization-agnostic objectives (and the baselines they beat)."""

from .collator import MFTCollator
from .config import MFTConfig, ModelConfig, RecipeError, load_recipe
from .objectives import AR, MLM, MLMU, OBJECTIVES, ARReverse, build_objective
from .trainer import MFTTrainer, QASet, weighted_token_loss

__version__ = "0.1.0"

__all__ = ["AR", "ARReverse", "MLM", "MLMU", "OBJECTIVES", "MFTCollator", "MFTConfig", "MFTTrainer", "ModelConfig",
           "QASet", "RecipeError", "build_objective", "load_recipe", "weighted_token_loss"]
