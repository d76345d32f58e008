"""The layout's rules, checked on the source: a newcomer can trust the folders to say where things are.

- every package folder is installed under its ``bisup`` name (pyproject lists them);
- the import graph runs one way: ``bisup`` (toolkit/) uses converters, firmware_bridge and boards, never the
  reverse, no library module imports an example, and only the command line imports the command line;
- one place asks which kind a deployment is (``bisup.deployment``);
- modules stay readable (at most 500 lines) and parameters are annotated (at least 95 %).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"toolkit": "bisup", "converters": "bisup.converters", "firmware_bridge": "bisup.firmware_bridge",
           "boards": "bisup.boards"}
LOWER = ("bisup.converters", "bisup.firmware_bridge", "bisup.boards")


def _modules() -> dict[str, Path]:
    """Every library module by its import name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_every_package_folder_is_installed_under_bisup():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert set(setuptools["packages"]) == folders
    assert setuptools["package-dir"] == {package: folder for folder, package in FOLDERS.items()}


def test_the_lower_folders_never_import_the_toolkit():
    upward = {name: sorted(i for i in _imports(path) if i.startswith("bisup") and not i.startswith(LOWER))
              for name, path in _modules().items() if name.startswith(LOWER)}
    assert {name: found for name, found in upward.items() if found} == {}


def test_no_library_module_imports_an_example():
    users = {name: sorted(i for i in _imports(path) if i.startswith("bisup.examples"))
             for name, path in _modules().items()
             if not name.startswith("bisup.examples") and name != "bisup.cli.examples"}
    assert {name: found for name, found in users.items() if found} == {}


def test_only_the_command_line_imports_the_command_line():
    """Presentation (tables, options) stays in ``bisup.cli``; the library returns results, never text for it."""
    users = {name: sorted(i for i in _imports(path) if i.startswith("bisup.cli"))
             for name, path in _modules().items() if not name.startswith("bisup.cli")}
    assert {name: found for name, found in users.items() if found} == {}


def test_only_the_deployment_asks_which_kind_it_is():
    askers = {name for name, path in _modules().items() if "is_staged" in path.read_text()}
    assert askers == {"bisup.deployment", "bisup.firmware_bridge.exits_model"}  # the user and the definition


@pytest.mark.parametrize("name, path", sorted(_modules().items()))
def test_modules_stay_readable(name, path):
    assert len(path.read_text().splitlines()) <= 500, f"{path.relative_to(ROOT)} is over 500 lines: split it by job"


def test_parameters_are_annotated():
    total = annotated = 0
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                        *(a for a in (node.args.vararg, node.args.kwarg) if a)]
                named = [a for a in args if a.arg not in ("self", "cls")]
                total += len(named)
                annotated += sum(a.annotation is not None for a in named)
    assert annotated / total >= 0.95, f"{annotated} of {total} parameters annotated"
