"""Data: schemas and loaders, tokenization, and the papers' task generators."""

from .retrieval import RetrievalTask
from .schema import TaskData, load_data_files, write_jsonl
from .tokenize import TokenizedDataset, build_word_tokenizer, encode_prompt, encode_row, row_texts

TASKS = {"retrieval": RetrievalTask}

__all__ = ["TASKS", "RetrievalTask", "TaskData", "TokenizedDataset", "build_word_tokenizer", "encode_prompt",
           "encode_row", "load_data_files", "row_texts", "write_jsonl"]
