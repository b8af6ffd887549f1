"""A run owns its output folder: an identity that its checkpoints carry, and a lock while it runs.

Identity. A run is its resolved recipe and its training data. `RunIdentity` keeps the recipe values
that decide what is trained (every section, less the settings that only say where and how often to
log, evaluate, save or push, see `NOT_IDENTITY`) and a SHA-256 of the training rows. It is written
as `mft_run.json` into the output folder and into every checkpoint (`mft.checkpoints`); a resume
continues a checkpoint only when the identities agree, and otherwise names what differs. A folder
that holds another run's checkpoints is refused to a new run unless `overwrite_output_dir` is set.

Lock. `OutputFolderLock` creates `OUTPUT_DIR/.mft.lock` (exclusively) holding the holder's pid, host
and start time, and removes it when the run ends. A second run in the folder is refused while the
holder lives; a lock left by a process that no longer exists on this host is taken over (the
message says so). A lock from another host cannot be checked: the message says how to clear it.
(Written by hand: no library in the stack locks a training folder.)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RecipeError

IDENTITY_FILE = "mft_run.json"
LOCK_FILE = ".mft.lock"

# Training settings that do not change what is trained: where and how often the run logs,
# evaluates, saves and pushes, on what hardware it runs, and how the same loss is computed
# (activation checkpointing, the LM head's chunking). Prefixes.
NOT_IDENTITY = ("output_dir", "overwrite_output_dir", "logging_", "log_", "eval_", "per_device_eval_batch_size",
                "save_", "push_to_hub", "hub_", "report_to", "disable_tqdm", "resume_from_checkpoint", "run_name",
                "max_new_tokens", "decoding", "dataloader_", "use_cpu", "deepspeed", "ddp_", "fsdp", "include_",
                "torch_compile", "debug", "skip_memory_metrics", "load_best_model_at_end", "metric_for_best_model",
                "greater_is_better", "prediction_loss_only", "label_names", "accelerator_config",
                "parallelism_config", "restore_callback_states_from_checkpoint", "activation_checkpointing",
                "gradient_checkpointing", "project", "trackio_", "logits_chunk_size", "full_logits")
# Data settings that name where the rows are, not what they are (the rows themselves are hashed).
NOT_IDENTITY_DATA = ("train_file", "train_dataset", "qa_file")


@dataclass
class RunIdentity:
    recipe: dict[str, Any]  # "section.key" -> value, the settings that decide what is trained
    data: str  # SHA-256 of the training rows

    @classmethod
    def of(cls, resolved_recipe: dict[str, Any], train_rows: list[dict[str, Any]]) -> "RunIdentity":
        recipe = {}
        for section, values in resolved_recipe.items():
            for key, value in (values or {}).items():
                skipped = NOT_IDENTITY if section == "training" else NOT_IDENTITY_DATA if section == "data" else ()
                if not key.startswith(skipped):
                    recipe[f"{section}.{key}"] = value
        rows = json.dumps(train_rows, sort_keys=True, ensure_ascii=False).encode()
        return cls(recipe=json.loads(json.dumps(recipe, default=str)), data=hashlib.sha256(rows).hexdigest())

    def differences(self, other: "RunIdentity") -> list[str]:
        """What differs, as a short text per setting ("training.learning_rate 0.001 -> 0.002")."""
        found = [f"{key} {other.recipe.get(key, '(unset)')!r} -> {self.recipe.get(key, '(unset)')!r}"
                 for key in sorted(set(self.recipe) | set(other.recipe)) if self.recipe.get(key) != other.recipe.get(key)]
        if self.data != other.data:
            found.append("the training rows")
        return found

    def owns(self, folder: str | Path) -> bool:
        """Whether `folder` (a run folder or checkpoint) carries this very identity."""
        saved = RunIdentity.read(folder)
        return saved is not None and not self.differences(saved)

    def write(self, folder: str | Path) -> None:
        (Path(folder) / IDENTITY_FILE).write_text(json.dumps({"recipe": self.recipe, "data": self.data}, indent=1) + "\n")

    @classmethod
    def read(cls, folder: str | Path) -> "RunIdentity | None":
        path = Path(folder) / IDENTITY_FILE
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
            return cls(recipe=saved["recipe"], data=saved["data"])
        except (ValueError, KeyError, TypeError):
            return None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoint-N folders of `output_dir`, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob("checkpoint-*") if path.is_dir() and path.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda path: int(path.name.split("-")[-1]))


def check_resume(identity: RunIdentity, checkpoint: str | Path) -> None:
    """Refuse to continue `checkpoint` unless it belongs to the run `identity` describes."""
    saved = RunIdentity.read(checkpoint)
    if saved is None:
        raise RecipeError(f"{checkpoint} carries no run identity ({IDENTITY_FILE}: made by an older mft or another "
                          f"tool), so it cannot be told to be this run's; start afresh in another training.output_dir")
    differences = identity.differences(saved)
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise RecipeError(f"{checkpoint} belongs to another run ({shown}); resume it with its own recipe "
                          f"(its resolved_recipe.yaml), or start this run in another training.output_dir")


def check_checkpoint_readable(checkpoint: str | Path) -> None:
    """Refuse a damaged checkpoint before training starts, naming the previous complete one: its
    trainer state must parse, its weights' headers and its torch files' archives must be whole (a
    truncated file fails these cheap checks; nothing is loaded)."""
    import zipfile

    checkpoint = Path(checkpoint)
    problem = None
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        problem = "trainer_state.json is missing or unreadable"
    for path in sorted(checkpoint.glob("*.safetensors")) if problem is None else []:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as weights:
                names = list(weights.keys())
                if names:
                    weights.get_slice(names[-1])  # the last tensor: its bytes must lie inside the file
        except Exception:  # safetensors raises its own error types for a damaged file
            problem = f"{path.name} is damaged"
            break
    for path in sorted(checkpoint.glob("*.pt")) + sorted(checkpoint.glob("*.pth")) if problem is None else []:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no directory
            problem = f"{path.name} is damaged"
            break
    if problem is None:
        return
    earlier = [path for path in checkpoints(checkpoint.parent) if path != checkpoint and
               int(path.name.split("-")[-1]) < int(checkpoint.name.split("-")[-1])]
    advice = (f"resume from the previous complete one: training.resume_from_checkpoint={earlier[-1]}" if earlier
              else "no earlier checkpoint is left: start afresh with training.overwrite_output_dir=true")
    raise RecipeError(f"{checkpoint} cannot be resumed ({problem}); {advice}")


def check_fresh_start(identity: RunIdentity, output_dir: str | Path, overwrite: bool) -> list[Path]:
    """A run that does not resume may start in a folder without checkpoints; with `overwrite`, the
    checkpoints found are returned, to be deleted. Otherwise a `RecipeError` says what to do."""
    found = checkpoints(output_dir)
    if not found or overwrite:
        return found
    whose = "of this same run" if identity.owns(found[-1]) else "of another run"
    raise RecipeError(f"{output_dir} holds checkpoints {whose} ({found[-1].name}); continue it with "
                      f"training.resume_from_checkpoint=true, start afresh with training.overwrite_output_dir=true "
                      f"(deletes them), or choose another training.output_dir")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputFolderLock:
    """`with OutputFolderLock(output_dir): ...` holds the folder for the run (see the module docstring)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.note = ""  # set when a stale lock was taken over

    def __enter__(self) -> "OutputFolderLock":
        self.created = not self.path.parent.exists()  # removed again if the run leaves it empty
        self.path.parent.mkdir(parents=True, exist_ok=True)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                with open(self.path, "x") as file:
                    json.dump(holder, file)
                return self
            except FileExistsError:
                other = self._holder()
                if other.get("host") == holder["host"] and isinstance(other.get("pid"), int) \
                        and not _process_exists(other["pid"]):
                    self.note = f"took over {self.path} from process {other['pid']}, which no longer exists"
                    self.path.unlink(missing_ok=True)
                    continue
                raise RecipeError(f"{self.path.parent} is in use by another run (process {other.get('pid', '?')} on "
                                  f"{other.get('host', '?')}, since {other.get('started', '?')}); wait for it or use "
                                  f"another training.output_dir (if that run is dead, delete {self.path})") from None
        raise RecipeError(f"could not lock {self.path.parent}; delete {self.path} if no run is using the folder")

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc) -> None:
        if self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
            if self.created and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()  # a run refused before writing anything leaves no folder behind
