"""`mft eval RUN --qa FILE` re-evaluates a finished run exactly as training's final evaluation did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mft.train
from mft import cli
from mft.data import RetrievalTask, write_jsonl
from mft.eval import direction_results

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("objective", ["mlm_u", "ar"])
def test_eval_reproduces_the_runs_final_metrics(tmp_path, capsys, objective):
    out = tmp_path / "run"
    assert mft.train.main([
        str(ROOT / "recipes" / "quickstart.yaml"), f"objective.name={objective}", "task.num_pairs=10",
        "model.hidden_size=16", "model.num_hidden_layers=1", "model.intermediate_size=32", "training.max_steps=30",
        "training.learning_rate=1e-2", "training.eval_strategy=no", f"training.output_dir={out}",
        "training.report_to=none", "training.save_strategy=no", "training.disable_tqdm=true"]) == 0
    qa = tmp_path / "qa.jsonl"
    write_jsonl(qa, RetrievalTask(num_pairs=10).build().qa)
    capsys.readouterr()
    assert cli.main(["eval", str(out), "--qa", str(qa), "--max-new-tokens", "16"]) == 0
    printed = capsys.readouterr().out
    assert "| forward |" in printed and "| backward |" in printed
    final = direction_results(json.loads((out / "eval_results.json").read_text()))  # (less baseline, retention)
    assert json.loads((out / "eval_qa.json").read_text()) == final


def test_eval_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "missing"), "--qa", str(tmp_path / "qa.jsonl")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert cli.main(["eval", str(tmp_path), "--qa", str(qa)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "line 1" in error and "direction" in error
