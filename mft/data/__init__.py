"""Data: schemas and loaders, tokenization, and the papers' task generators.

The tokenization names are imported on first use (PEP 562): they need transformers, and the recipe
check (`mft.config`) needs only the task generators."""

import importlib

from .bios import BioSTask
from .facts import FactsTask
from .profiles import ProfilesTask
from .relationship import RelationshipTask
from .retrieval import RetrievalTask
from .star_graph import StarGraphTask
from .schema import TaskData, load_data_files, write_jsonl
from .wikireversal import WikiReversalTask

TASKS = {task.name: task for task in (RetrievalTask, RelationshipTask, BioSTask, StarGraphTask, FactsTask, WikiReversalTask, ProfilesTask)}

_TOKENIZE_NAMES = ("TokenizedDataset", "build_word_tokenizer", "encode_prompt", "encode_row", "row_texts")

__all__ = ["TASKS", "BioSTask", "FactsTask", "RelationshipTask", "RetrievalTask", "StarGraphTask", "TaskData",
           "WikiReversalTask", "load_data_files", "write_jsonl", *_TOKENIZE_NAMES]


def __getattr__(name: str):
    if name in _TOKENIZE_NAMES:
        value = getattr(importlib.import_module(".tokenize", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mft.data' has no attribute {name!r}")
