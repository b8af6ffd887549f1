"""The shipped accelerate configs: each one loads, and those for GPUs are checked against a recipe
(DeepSpeed's "auto" values come from the recipe; DeepSpeed set twice is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from mft.config import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "accelerate_configs"
EXPECTED = {
    "cpu.yaml": "NO", "cpu_two_processes.yaml": "MULTI_GPU", "single_gpu.yaml": "NO", "multi_gpu.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
    "deepspeed_zero2.yaml": "DEEPSPEED", "deepspeed_zero3.yaml": "DEEPSPEED", "deepspeed_zero3_offload.yaml": "DEEPSPEED",
}
ZERO = {"deepspeed_zero2.yaml": (2, False), "deepspeed_zero3.yaml": (3, False), "deepspeed_zero3_offload.yaml": (3, True)}


def test_every_shipped_config_is_known_and_loads_in_accelerate():
    shipped = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert set(EXPECTED) <= set(shipped), "a config named in the README is missing"
    for name in shipped:
        config = load_config_from_file(str(CONFIGS / name))
        assert str(config.distributed_type).split(".")[-1] == EXPECTED.get(name, str(config.distributed_type).split(".")[-1])
        raw = yaml.safe_load((CONFIGS / name).read_text())
        # precision comes from the recipe (training.bf16 / fp16), never from the launcher
        assert raw.get("mixed_precision", "no") == "no", name
        assert f"accelerate_configs/{name}" in (CONFIGS / name).read_text(), f"{name}: its launch command is not in it"


@pytest.mark.parametrize("name", list(ZERO))
def test_deepspeed_configs_name_one_json_whose_batch_settings_come_from_the_recipe(name, tmp_path):
    raw = yaml.safe_load((CONFIGS / name).read_text())
    json_path = ROOT / raw["deepspeed_config"]["deepspeed_config_file"]
    assert set(raw["deepspeed_config"]) <= {"deepspeed_config_file", "zero3_init_flag"}  # no second copy of settings
    settings = json.loads(json_path.read_text())
    stage, offload = ZERO[name]
    assert settings["zero_optimization"]["stage"] == stage
    assert ("offload_param" in settings["zero_optimization"]) == offload
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert settings[key] == "auto", key

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        f"training.output_dir={tmp_path}", f"training.deepspeed={json_path}", "training.per_device_train_batch_size=3",
        "training.gradient_accumulation_steps=2", "training.max_grad_norm=0.5"])
    filled = recipe.training.hf_deepspeed_config.config
    assert filled["train_micro_batch_size_per_gpu"] == 3
    assert filled["gradient_accumulation_steps"] == 2
    assert filled["gradient_clipping"] == 0.5
    assert recipe.training.hf_deepspeed_config.is_zero3() == (stage == 3)


def test_fsdp_config_is_fsdp2_wrapping_decoder_layers():
    raw = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    assert raw["fsdp_version"] == 2 and raw["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_deepspeed_in_the_recipe_and_in_the_accelerate_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with a DeepSpeed config sets
    with pytest.raises(RecipeError, match="one source of truth") as error:
        load_recipe(ROOT / "recipes" / "quickstart.yaml",
                    [f"training.output_dir={tmp_path}", f"training.deepspeed={CONFIGS / 'deepspeed' / 'zero2.json'}"])
    assert "\n" not in str(error.value)


def test_a_missing_deepspeed_file_is_refused_in_one_line(tmp_path):
    with pytest.raises(RecipeError, match="training: deepspeed = .*no such file") as error:
        load_recipe(ROOT / "recipes" / "quickstart.yaml",
                    [f"training.output_dir={tmp_path}", f"training.deepspeed={tmp_path / 'none.json'}"])
    assert "\n" not in str(error.value)
