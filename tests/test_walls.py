"""The package's walls: prediction, scoring and generation never load the training code, the config checks
never load the LR range test or W&B, the file writers and the report's command line never load torch, models never talk to the console or W&B, the report never imports
the code that trains, the LR range test's method has no output of its own, and the module-level imports
form no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import s18exp

PACKAGE_DIR = Path(s18exp.__file__).parent
CONSOLE_OR_TRACKING = {"s18exp.console", "s18exp.tracking", "wandb", "rich"}
TRAINING_CODE = ("s18exp.tasks", "s18exp.models", "s18exp.run", "s18exp.loop", "s18exp.data")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module_level_only: bool) -> set[str]:
    """Every module `path` imports (`from a import b` counts as a and, when a.b is a module, a.b); with
    `module_level_only`, imports inside functions and classes (which run only when called) are left out."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    package = module_name(path) if is_package else module_name(path).rpartition(".")[0]

    def walk(node: ast.AST) -> list[ast.AST]:
        found = []
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            found.append(child)
            found += walk(child)
        return found

    names: set[str] = set()
    for node in walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """The package's own modules, each with the package modules it imports at module level."""
    modules = package_modules()
    return {name: imported_modules(path, module_level_only=True) & modules.keys() - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


TRAINING_ONLY = (
    "s18exp.loop", "s18exp.updates", "s18exp.augment", "s18exp.judge_training", "s18exp.run", "s18exp.lr_find",
)


def loaded_by(module: str) -> set[str]:
    """The s18exp modules that `import <module>` loads, in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.startswith('s18exp'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize("module", ["s18exp.predict", "s18exp.score", "s18exp.generate"])
def test_the_commands_that_read_a_checkpoint_load_no_training_code(module: str) -> None:
    loaded = loaded_by(module)
    assert {module, "s18exp.checkpoint", "s18exp.runtime", "s18exp.tasks"} <= loaded  # the check sees real imports
    training = {name for name in loaded if any(name == wall or name.startswith(f"{wall}.") for wall in TRAINING_ONLY)}
    assert not training, f"{module} loads {sorted(training)}"


def test_the_config_checks_load_neither_the_lr_range_test_nor_wandb() -> None:
    """s18exp.config reads the values an option may take from s18exp.options, plain data."""
    loaded = loaded_by("s18exp.config")
    assert "s18exp.options" in loaded
    offending = {name for name in loaded if name.startswith("s18exp.lr_find") or name == "s18exp.tracking"}
    assert not offending, sorted(offending)


@pytest.mark.parametrize("module", ["s18exp.atomic_files", "s18exp.report.__main__"])
def test_writers_and_the_report_command_line_load_no_torch(module: str) -> None:
    """Text and JSON are written without torch (the sweeper writes multirun.yaml so), and
    `python -m s18exp.report --help` answers without it."""
    result = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('torch' in sys.modules)"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]


def test_models_import_no_console_or_tracking() -> None:
    models = sorted((PACKAGE_DIR / "models").glob("*.py"))
    assert models
    for path in models:
        imports = imported_modules(path, module_level_only=False)
        offending = {name for name in imports if name.split(".")[0] in {"wandb", "rich"} or name in CONSOLE_OR_TRACKING}
        assert not offending, f"{path.name} imports {sorted(offending)}"


def test_the_report_knows_tasks_only_by_what_their_runs_wrote() -> None:
    """The report reads a task's keys, files and classes from summary.json (s18exp.report.spec), never from the
    task's code: a report of old run dirs does not depend on today's tasks."""
    report = sorted((PACKAGE_DIR / "report").glob("*.py"))
    assert report
    for path in report:
        imports = imported_modules(path, module_level_only=False)
        offending = {name for name in imports if any(name == wall or name.startswith(f"{wall}.") for wall in TRAINING_CODE)}
        assert not offending, f"report/{path.name} imports {sorted(offending)}"


def test_the_lr_range_test_method_has_no_output_of_its_own() -> None:
    """s18exp/lr_find/range_test.py runs the test and picks: the terminal, files, pictures and W&B belong to
    s18exp/lr_find/display.py."""
    imports = imported_modules(PACKAGE_DIR / "lr_find" / "range_test.py", module_level_only=False)
    outside = {name for name in imports if name.split(".")[0] in {"wandb", "rich", "PIL", "matplotlib"}}
    assert not outside, f"range_test.py imports {sorted(outside)}"
    own = imports & package_modules().keys()
    assert "s18exp.runtime" in own  # the check sees real imports
    assert own <= {"s18exp.data", "s18exp.errors", "s18exp.options", "s18exp.runtime", "s18exp.updates"}, sorted(own)


def test_the_readers_share_no_training_code_with_what_the_vae_trains_against() -> None:
    """The panel's readers (s18exp/readers/) learn apart from the VAE: they import neither the training loop and
    its update step, nor the judge's training, nor the judge's or the guides' networks, nor the VAE itself (the
    judge module's inference helper `classify` is the one name they may take from it)."""
    walls = ("s18exp.loop", "s18exp.updates", "s18exp.judge_training", "s18exp.models.guides", "s18exp.models.vae", "s18exp.tasks")
    readers = sorted((PACKAGE_DIR / "readers").glob("*.py"))
    assert len(readers) >= 4
    taken = set()
    for path in readers:
        imports = imported_modules(path, module_level_only=False)
        offending = {name for name in imports if any(name == wall or name.startswith(f"{wall}.") for wall in walls)}
        assert not offending, f"readers/{path.name} imports {sorted(offending)}"
        taken |= {name for name in imports if name.startswith("s18exp.models.judge.")}
    assert taken <= {"s18exp.models.judge.classify"}, sorted(taken)


def test_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert {"s18exp.loop", "s18exp.runtime", "s18exp.predict"} <= graph.keys()
    assert "s18exp.runtime" in graph["s18exp.loop"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None

