"""Training objectives. Each turns a tokenized example into model rows (see `base`)."""

from .autoregressive import AR, ARReverse, ARReverseEntity, ARReverseSegment
from .base import IGNORE, Objective, Row, SpecialTokens, example_generator
from .masked import MLM, MLMU
from .mixture import Mixture
from .permutation import PLM
from .reconstruct import MaskedReconstruct, MaskedSFT

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (AR, ARReverse, ARReverseEntity, ARReverseSegment, MLM, MLMU, PLM, MaskedReconstruct, MaskedSFT, Mixture)
}

# How each objective's model is decoded at evaluation time unless the recipe says otherwise.
DEFAULT_DECODING = {"ar": "causal", "ar_reverse": "causal", "ar_reverse_entity": "causal", "ar_reverse_segment": "causal", "mlm": "masked", "mlm_u": "masked", "plm": "masked",
                    "masked_reconstruct": "causal", "masked_sft": "causal"}


def default_decoding(objective: Objective) -> str:
    """How a model trained with `objective` answers questions unless the recipe says otherwise
    (a mixture: its heaviest component's way)."""
    if isinstance(objective, Mixture):
        heaviest = max(objective.mix, key=objective.mix.get)
        return DEFAULT_DECODING[heaviest]
    return DEFAULT_DECODING.get(objective.name, "causal")


def build_objective(name: str, **options) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](**options)


__all__ = [
    "AR", "ARReverse", "ARReverseEntity", "ARReverseSegment", "MLM", "MLMU", "PLM", "MaskedReconstruct", "MaskedSFT", "Mixture", "IGNORE", "Objective", "Row", "SpecialTokens",
    "OBJECTIVES", "DEFAULT_DECODING", "build_objective", "default_decoding", "example_generator",
]
