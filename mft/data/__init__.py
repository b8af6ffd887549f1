"""Data: schemas and loaders, tokenization, and the papers' task generators."""

from .facts import FactsTask
from .retrieval import RetrievalTask
from .schema import TaskData, load_data_files, write_jsonl
from .tokenize import TokenizedDataset, build_word_tokenizer, encode_prompt, encode_row, row_texts

TASKS = {"retrieval": RetrievalTask, "facts": FactsTask}

__all__ = ["TASKS", "FactsTask", "RetrievalTask", "TaskData", "TokenizedDataset", "build_word_tokenizer", "encode_prompt",
           "encode_row", "load_data_files", "row_texts", "write_jsonl"]
