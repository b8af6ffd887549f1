"""The package's import structure: no cycles, and a light import of the pure-torch parts."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mft"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (also inside functions)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                # A module importing its own package's face (mft.objectives.x from mft.objectives) would
                # be a cycle through __init__; it is counted.
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_builder_sees_imports_and_cycles():
    graph = import_graph()
    assert "mft.objectives.base" in graph["mft.objectives.masked"]  # a relative import is seen
    assert "mft.errors" in graph["mft.config"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def imported_modules(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent)
    return set(result.stdout.split())


def test_importing_the_objectives_does_not_import_the_trainer():
    modules = imported_modules("import mft.objectives")
    assert "mft.objectives.masked" in modules
    assert "transformers.trainer" not in modules and "mft.trainer" not in modules


def test_the_top_level_is_lazy_and_complete():
    assert "transformers" not in imported_modules("import mft")
    import mft

    for name in mft.__all__:  # every advertised name resolves
        assert getattr(mft, name) is not None


def test_a_bad_recipe_is_reported_without_importing_transformers(tmp_path):
    """A recipe is checked before transformers (and peft, bitsandbytes: ~4 s) load, so a mistake is
    reported in about a second and a half: the training section is checked against a cached table
    of MFTConfig's fields. The first check builds the table; the second reads it."""
    recipe = PACKAGE.parent / "recipes" / "quickstart.yaml"
    code = ("import runpy, sys\n"
            f"sys.argv = ['mft.train', {str(recipe)!r}, 'training.learning_rat=1', "
            f"'training.output_dir={tmp_path / 'run'}']\n"
            "try:\n    runpy.run_module('mft.train', run_name='__main__')\n"
            "except SystemExit as exit:\n    print('status', exit.code)\n"
            "print('transformers loaded:', 'transformers' in sys.modules)")
    env = {**os.environ, "MFT_CACHE": str(tmp_path / "cache")}
    for attempt in ("builds the table", "reads the table"):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                cwd=PACKAGE.parent)
        assert "status 2" in result.stdout, result.stderr
        assert result.stderr.strip() == ("mft: error: unknown training option training.learning_rat; did you mean "
                                         "training.learning_rate?")
    assert "transformers loaded: False" in result.stdout  # the second time
    assert not (tmp_path / "run").exists()


def test_the_cached_training_table_is_mftconfigs_own(tmp_path, monkeypatch):
    from mft.config import training_fields
    from mft.training_args import training_field_table

    monkeypatch.setenv("MFT_CACHE", str(tmp_path))
    built = training_fields()
    assert built == training_field_table()
    assert built["learning_rate"] == {"type": "float", "default": 5e-05}
    assert built["max_new_tokens"]["default"] == 16  # mft's own fields are in it
    [cache] = tmp_path.glob("training_fields-*.json")
    cache.write_text("{not json")  # a damaged cache is rebuilt, not trusted
    assert training_fields() == built and json.loads(cache.read_text()) == built
