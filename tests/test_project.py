"""The project's promises about itself: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    quickstart = ROOT.joinpath("README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_readme_quickstart_has_exactly_two_commands_and_ci_runs_them():
    setup, tests = readme_commands()
    assert "python -m mft.train recipes/quickstart.yaml" in setup
    ci = ROOT.joinpath(".ci", "run").read_text()
    installs = [line for line in ci.splitlines() if line.startswith("pip install")]
    assert " && ".join(installs) in setup  # CI installs exactly as the README does
    assert "torch==2.13.0" in installs[0]
    test_command = tests.split("&&")[-1].strip()
    assert test_command in ci.splitlines()
