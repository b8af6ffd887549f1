"""benchmarks/reproduce_paper.py builds a valid recipe for every (task, objective) it runs: each is
checked by mft's recipe validation and data preparation (no training: the runs are benchmarks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from mft.config import parse_recipe
from mft.train import prepare

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("reproduce_paper", ROOT / "benchmarks" / "reproduce_paper.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)

SMALL = {"retrieval": {"num_pairs": 20}, "relationship": {"num_chains": 20}, "bios": {"num_people": 30},
         "star_graph": {"num_train": 30, "num_test": 5}}


@pytest.mark.parametrize("task,label", [(task, label) for task, settings in reproduce.TASKS.items()
                                        for label in settings["objectives"]])
def test_every_run_is_a_valid_recipe(tmp_path, task, label):
    raw = reproduce.recipe_for(task, label, 1.0, tmp_path / "run")
    raw["task"].update(SMALL[task])
    recipe = parse_recipe(raw)
    data, tokenizer, objective, dataset = prepare(recipe)
    assert len(dataset) == len(data.train) > 0 and data.qa
    assert recipe.model.architecture == raw["model"]["architecture"]


def test_every_paper_figure_names_a_run():
    labels = {label for label, _, _ in reproduce.ALL}
    for task, figures in reproduce.PAPER.items():
        assert set(figures) <= labels, task


def test_write_recipes_writes_each_run_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["reproduce_paper.py", "--tasks", "bios", "--only", "MLM-U", "AR",
                                     "--write-recipes", str(tmp_path / "recipes"), "--runs-dir", str(tmp_path / "runs")])
    reproduce.main()
    written = sorted(p.relative_to(tmp_path / "recipes").as_posix() for p in (tmp_path / "recipes").rglob("*.yaml"))
    assert written == ["bios/AR.yaml", "bios/MLM_U.yaml"]
    recipe = parse_recipe(yaml.safe_load((tmp_path / "recipes" / "bios" / "MLM_U.yaml").read_text()))
    assert recipe.objective_name == "mlm_u" and recipe.training.max_steps == reproduce.TASKS["bios"]["objectives"]["MLM-U"]
    assert not (tmp_path / "runs").exists()
