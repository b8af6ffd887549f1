"""examples/training_dynamics: the data of Zhu et al.'s two settings and a short run of the script."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("dynamics", ROOT / "examples" / "training_dynamics" / "train.py")
dynamics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dynamics)


def test_reversal_setting_holds_out_the_reverse_of_one_way_pairs():
    train, held_out = dynamics.reversal_data(50, 0.7, random.Random(0))
    forward = [t for t in train if "->" in t]
    backward = [t for t in train if "<-" in t]
    assert len(forward) == 50 and len(backward) == 35 and len(held_out) == 15
    pairs = {tuple(t.split(" -> ")) for t in forward}
    for text in backward + held_out:
        y, x = text.split(" <- ")
        assert (x, y) in pairs, "every reverse sequence reverses a trained pair"
    assert not set(held_out) & set(train)


def test_chain_setting_holds_out_the_composed_pairs():
    train, held_out = dynamics.chain_data(40, 0.7, random.Random(0))
    xy = dict(t.split(" -> ") for t in train if t.startswith("x") and " y" in t)
    yz = dict(t.split(" -> ") for t in train if t.startswith("y"))
    assert len(xy) == len(yz) == 40 and len(held_out) == 12
    for text in held_out:
        x, z = text.split(" -> ")
        assert yz[xy[x]] == z and text not in train


def test_script_writes_curves_for_both_objectives(tmp_path):
    result = subprocess.run([sys.executable, "examples/training_dynamics/train.py", "--setting", "reversal",
                             "--alphabet", "12", "--steps", "80", "--eval-every", "40", "--hidden-size", "32",
                             "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "dynamics.json").read_text())
    for objective in ("ar", "mlm_u"):
        points = results["reversal"][objective]
        assert [p["step"] for p in points] == [1, 40, 80]
        assert all(p["train_nll"] > 0 and p["held_out_nll"] > 0 for p in points)
        assert points[-1]["train_nll"] < points[0]["train_nll"], "training lowers the training NLL"
    assert (tmp_path / "dynamics.png").stat().st_size > 0
