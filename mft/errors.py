"""The errors mft raises for problems a user can fix, each phrased as one line that names the field,
row or file and what to do. Every command catches `MFTError`, prints its one line and exits with
status 2; anything else is a bug (see `mft.train.main`, which writes its traceback to a file).

    MFTError          the base: a problem with what the user gave mft
      RecipeError     a recipe, its data, or an objective/model/option combination that cannot work
      HubError        a push to the Hugging Face Hub that failed (the local run is kept)

`RecipeError` is also a `ValueError` (it was one before this module existed, and callers of the
Python API catch it as such).
"""

from __future__ import annotations


class MFTError(Exception):
    """A problem with the user's input or environment, phrased for the person who can fix it."""


class RecipeError(MFTError, ValueError):
    """A problem with a recipe or its inputs: one line naming the field and the fix."""


class HubError(MFTError):
    """A push to the Hub that failed: one line with the reason (never the token) and how to retry."""
