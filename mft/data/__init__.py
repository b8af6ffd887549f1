"""Data: schemas and loaders, tokenization, and the papers' task generators."""

from .bios import BioSTask
from .facts import FactsTask
from .relationship import RelationshipTask
from .retrieval import RetrievalTask
from .star_graph import StarGraphTask
from .schema import TaskData, load_data_files, write_jsonl
from .wikireversal import WikiReversalTask
from .tokenize import TokenizedDataset, build_word_tokenizer, encode_prompt, encode_row, row_texts

TASKS = {task.name: task for task in (RetrievalTask, RelationshipTask, BioSTask, StarGraphTask, FactsTask, WikiReversalTask)}

__all__ = ["TASKS", "BioSTask", "FactsTask", "RelationshipTask", "RetrievalTask", "StarGraphTask", "TaskData", "WikiReversalTask", "TokenizedDataset", "build_word_tokenizer", "encode_prompt",
           "encode_row", "load_data_files", "row_texts", "write_jsonl"]
