"""Atomic checkpoints for any `transformers.Trainer` subclass.

Each checkpoint is written into `OUTPUT_DIR/.checkpoint-staging/` and renamed to `checkpoint-N`
only once complete, so a run killed while saving leaves its previous checkpoint as the last one,
and `resume_from_checkpoint` never picks up a half-written folder. (Written by hand: the Trainer
writes checkpoint-N in place.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .errors import MFTError
from .run_folder import RunIdentity, checkpoints

STAGING_DIR = ".checkpoint-staging"
PROGRESS_FILE = "mft_progress.json"  # the run's training seconds up to the checkpoint


def read_train_seconds(checkpoint: str) -> float:
    try:
        with open(os.path.join(checkpoint, PROGRESS_FILE)) as file:
            return float(json.load(file)["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


class AtomicCheckpointMixin:
    """Put it before the Trainer among the bases: `class T(AtomicCheckpointMixin, Trainer)`.
    `run_identity` (a `mft.run_folder.RunIdentity`, optional) is written into every checkpoint, so
    that a resume can tell whose checkpoint it is."""

    _staging = False  # True while a checkpoint is being written

    def __init__(self, *args, run_identity: RunIdentity | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_identity = run_identity
        self._seconds_before = 0.0  # training time of the run before the checkpoint this session resumed
        self._started = None

    def train(self, *args, resume_from_checkpoint=None, **kwargs):
        if isinstance(resume_from_checkpoint, str):
            self._seconds_before = read_train_seconds(resume_from_checkpoint)
        self._started = time.time()
        return super().train(*args, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    @property
    def train_seconds(self) -> float:
        """The run's training time so far, across resumptions (each checkpoint records its own)."""
        return self._seconds_before + (time.time() - self._started if self._started is not None else 0.0)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written into the staging folder (every process writes its part
        there), then renamed into place by the main process: a checkpoint-N folder is always complete."""
        run_dir = self._get_output_dir(trial)
        staging = os.path.join(run_dir, STAGING_DIR)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left behind
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as error:
            if not _disk_full(error):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            complete = checkpoints(run_dir)
            kept = complete[-1].name if complete else None
            raise MFTError(f"the disk is full: {PREFIX_CHECKPOINT_DIR}-{self.state.global_step} could not be written "
                           f"in {run_dir}; "
                           + (f"the previous checkpoint {kept} is intact: free some space, then resume with "
                              f"training.resume_from_checkpoint=true" if kept else
                              "no earlier checkpoint exists: free some space and start again")) from None
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            final = os.path.join(run_dir, name)
            best = self.state.best_model_checkpoint
            if best and os.path.abspath(best) == os.path.abspath(os.path.join(staging, name)):
                self.state.best_model_checkpoint = final  # where it will be, also in its saved state
                self.state.save_to_json(os.path.join(staging, name, TRAINER_STATE_NAME))
            if self.run_identity is not None:
                self.run_identity.write(os.path.join(staging, name))
            with open(os.path.join(staging, name, PROGRESS_FILE), "w") as file:
                json.dump({"train_seconds": round(self.train_seconds, 1)}, file)
            if os.path.isdir(final):  # the same step saved twice (e.g. after a resume): keep the newer
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


def _disk_full(error: BaseException) -> bool:
    """Whether a failed save ran out of space: ENOSPC, or torch's writer reporting a short write
    ("unexpected pos ..."), which is what a full disk looks like from inside torch.save."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error).lower()
    return "no space left" in text or "unexpected pos" in text
