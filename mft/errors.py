"""The errors mft raises for problems a user can fix, each phrased as one line that names the field,
row or file and what to do. Every command catches `MFTError`, prints its one line and exits with
status 2; anything else is a bug (see `mft.train.main`, which writes its traceback to a file).

    MFTError          the base: a problem with what the user gave mft
      RecipeError     a recipe, its data, or an objective/model/option combination that cannot work
      HubError        a push to the Hugging Face Hub that failed (the local run is kept)

`RecipeError` is also a `ValueError` (it was one before this module existed, and callers of the
Python API catch it as such).

An error nobody foresaw (a bug, a failing library) is reported in one line too, naming what was
being done, with the full traceback in a file (`write_traceback`): exit status 1.
"""

from __future__ import annotations

import tempfile
import traceback
from pathlib import Path


class MFTError(Exception):
    """A problem with the user's input or environment, phrased for the person who can fix it."""


class RecipeError(MFTError, ValueError):
    """A problem with a recipe or its inputs: one line naming the field and the fix."""


class HubError(MFTError):
    """A push to the Hub that failed: one line with the reason (never the token) and how to retry."""


def write_traceback(output_dir: Path | None) -> Path:
    """The current exception's traceback, written to OUTPUT_DIR/error.log (a temporary file when
    there is no run folder yet); returns the path."""
    text = traceback.format_exc()
    if output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            path = output_dir / "error.log"
            path.write_text(text)
            return path
        except OSError:
            pass
    with tempfile.NamedTemporaryFile("w", prefix="mft-error-", suffix=".log", delete=False) as file:
        file.write(text)
    return Path(file.name)


def unforeseen_error_line(error: BaseException, doing: str, output_dir: Path | None = None) -> str:
    """The one line that reports an unforeseen `error` raised while `doing` (e.g. "loading the
    model"), after writing its traceback (`write_traceback`)."""
    log = write_traceback(output_dir)
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    return f"mft: error while {doing}: {type(error).__name__}: {first_line} (full traceback: {log})"
