"""Training objectives. Each turns a tokenized example into model rows (see `base`).

Every objective class registers itself under its `name` in `OBJECTIVES` when its module is
imported; importing this package imports them all. A new objective: a dataclass subclass of
`Objective` in the module of its family (or a new module imported here), with its math in its
docstring and its rules (`decoding`, `architectures`, ...) as class attributes.
"""

from .autoregressive import AR, ARReverse, ARReverseEntity, ARReverseSegment
from .base import DECODINGS, IGNORE, MODEL_KINDS, OBJECTIVES, Objective, Row, SpecialTokens, example_generator
from .masked import MLM, MLMU
from .mixture import Mixture
from .permutation import PLM
from .reconstruct import MaskedReconstruct, MaskedSFT
from ..errors import RecipeError


def build_objective(name: str, **options) -> Objective:
    if name not in OBJECTIVES:
        raise RecipeError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](**options)


__all__ = [
    "AR", "ARReverse", "ARReverseEntity", "ARReverseSegment", "MLM", "MLMU", "PLM", "MaskedReconstruct", "MaskedSFT",
    "Mixture", "DECODINGS", "IGNORE", "MODEL_KINDS", "OBJECTIVES", "Objective", "Row", "SpecialTokens",
    "build_objective", "example_generator",
]
