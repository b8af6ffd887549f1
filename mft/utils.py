"""Small helpers with no dependencies beyond mft.errors: keeping secrets out of files, checking that
a path can be written before any work that would be lost."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from functools import lru_cache
from urllib.parse import urlparse
from pathlib import Path
from typing import Any

from .errors import RecipeError

# Keys that hold a credential wherever they appear in a recipe (any case). Matched by name, not by
# substring, so that options such as `max_new_tokens`, `mask_token` or `pad_token: "<pad>"` survive.
SECRET_KEYS = frozenset({"token", "hub_token", "push_to_hub_token", "hf_token", "api_token", "access_token",
                         "auth_token", "hub_api_token", "huggingface_token"})

HF_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")


def is_secret_key(key: Any, value: Any) -> bool:
    """Whether `key: value` may hold a secret: the key is a known credential name (`hub_token`,
    `HF_TOKEN`, `token`, ...) whatever its value, or any string value looks like a Hugging Face token
    (`hf_...`)."""
    if str(key).lower() in SECRET_KEYS:
        return True
    return isinstance(value, str) and HF_TOKEN_LIKE.search(value) is not None


def redact(mapping: Any) -> Any:
    """A copy of `mapping` without the keys that may hold a secret (`is_secret_key`), at any depth
    (mappings inside mappings and lists). The input is not changed."""
    if isinstance(mapping, dict):
        return {key: redact(value) for key, value in mapping.items() if not is_secret_key(key, value)}
    if isinstance(mapping, (list, tuple)):
        return [redact(item) for item in mapping]
    return mapping


def secret_paths(mapping: Any, prefix: str = "") -> list[str]:
    """The dotted names of the keys `redact` would remove that hold a value (not null or empty)."""
    found = []
    if isinstance(mapping, dict):
        for key, value in mapping.items():
            path = f"{prefix}{key}"
            if is_secret_key(key, value):
                if value not in (None, ""):
                    found.append(path)
            else:
                found += secret_paths(value, path + ".")
    elif isinstance(mapping, (list, tuple)):
        for item in mapping:
            found += secret_paths(item, prefix)
    return found


def mask_secrets(text: str, token: str | None) -> str:
    """`text` with the token (and anything shaped like a Hugging Face token) replaced by ***."""
    if token:
        text = text.replace(token, "***")
    text = HF_TOKEN_LIKE.sub("hf_***", text)
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def writable_folder(field: str, folder: Path) -> None:
    """Raise `RecipeError` (naming `field`) unless `folder` is, or can be made, a folder this process
    can write into: no file in its place or above it, no read-only ancestor. Creates nothing."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under {existing}, which is a file"
        raise RecipeError(f"{field} = {folder} {where}; give a folder path")
    try:  # os.access answers yes to root even on a read-only file system: try a write
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise RecipeError(f"{field} = {folder}: {existing} cannot be written ({error.strerror}); give a writable "
                          f"folder") from None


def writable_file(field: str, path: Path) -> None:
    """Raise `RecipeError` unless `path` can be written as a file (its folder is created if missing)."""
    if path.is_dir():
        raise RecipeError(f"{field} = {path} is a folder; give a file path")
    writable_folder(field, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub can be reached: not in offline mode (HF_HUB_OFFLINE) and its host
    accepts a connection within `timeout` seconds. Asked once per process, so that a missing network
    fails at once instead of after the libraries' retries (36-57 s measured)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True
