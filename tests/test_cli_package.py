"""The ``vortex`` command as a package: its layering, its entry points, its option placement.

The layering is checked on the source, from every ``import`` statement (those inside functions
too, which is where the old cycles hid): the CLI depends on the domain packages, never the
reverse, and no two modules of Vortex import each other, however indirectly.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import vortex
from vortex.cli import build_parser

SRC = Path(vortex.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The Vortex modules (and ``argparse``) that ``path`` imports anywhere in its body."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if f"{target}.{alias.name}" in modules)
    return {m for m in found if (m in modules or m == "argparse") and m != name}


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: _imports(path, set(paths)) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:  # argparse, or a module outside Vortex
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_the_old_cli_cycles():
    # the shapes the package replaced: cli -> rsi.cli -> cli, demo.cli -> demo.run -> demo.cli
    graph = {"vortex.cli": {"argparse", "vortex.rsi.cli", "vortex.status"},
             "vortex.rsi.cli": {"argparse", "vortex.cli"},
             "vortex.status": set(), "vortex.demo.cli": {"vortex.demo.run"},
             "vortex.demo.run": {"vortex.demo.cli", "vortex.demo.stages"},
             "vortex.demo.stages": set()}
    assert sorted(_cycles(graph)) == [["vortex.cli", "vortex.rsi.cli"],
                                      ["vortex.demo.cli", "vortex.demo.run"]]


def test_no_module_of_vortex_imports_another_that_imports_it_back():
    assert _cycles(_import_graph()) == []


# The training worker is a program of its own (``python -m vortex.training.worker``, started
# by the coordinator and by torchrun on other machines): its command line is the contract
# between those processes, not a ``vortex`` command.
OWN_PROGRAMS = {"vortex.training.worker"}


def test_only_the_cli_package_parses_command_lines():
    graph = _import_graph()
    outside = {name: deps for name, deps in graph.items()
               if not name.startswith("vortex.cli") and name != "vortex.__main__"}
    assert {n for n, d in outside.items() if "argparse" in d} == OWN_PROGRAMS
    assert {n: sorted(d) for n, d in outside.items()
            if any(m == "vortex.cli" or m.startswith("vortex.cli.") for m in d)} == {}


@pytest.mark.parametrize("module", sorted(_module_name(p) for p in (SRC / "cli").glob("*.py")
                                          if p.name != "__main__.py"))
def test_each_cli_module_imports_first_in_a_fresh_interpreter_and_stays_light(module):
    code = (f"import sys, {module}; "
            "print(','.join(m for m in ('torch', 'numpy', 'pyarrow', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("entry", [["-m", "vortex"], ["-m", "vortex.cli"]])
def test_python_dash_m_runs_the_command(entry):
    out = subprocess.run([sys.executable, "-P", *entry, "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(f"vortex {vortex.__version__} "), out


def test_console_script_points_at_the_package():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    module, _, function = project["scripts"]["vortex"].partition(":")
    assert (module, function) == ("vortex.cli", "main")


# -- options before or after the action, for every action of every group -----------------------

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    """A valid value for each positional argument of an action (a version, a time, an id)."""
    values = []
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        values.append("1" if action.type is not None else "some-id")
    return values


def _group_options(group: argparse.ArgumentParser) -> list[list[str]]:
    """The options ``group`` shares with its actions, each with a value that is not its default."""
    shared = []
    for action in group._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        # a JSON option (--storage-options) takes a JSON object; the others, any path
        value = '{"given": "%s"}' % action.dest if "options" in action.dest else f"/given/{action.dest}"
        shared.append([flag] if action.nargs == 0 else [flag, value])
    return shared


def _group_actions() -> list[tuple[str, str]]:
    return [(group, name) for group, parser in _subparsers(build_parser()).items()
            for name in _subparsers(parser)]


def test_every_group_with_actions_shares_home_and_json():
    groups = {g for g, _ in _group_actions()}
    assert {"audit", "proposals", "models"} <= groups
    for group in groups:
        flags = {o[0] for o in _group_options(_subparsers(build_parser())[group])}
        assert {"--home", "--json"} <= flags, group


@pytest.mark.parametrize("group,action", _group_actions())
def test_group_options_parse_the_same_before_and_after_the_action(group, action):
    parser = build_parser()
    group_parser = _subparsers(parser)[group]
    action_args = _positionals(_subparsers(group_parser)[action])
    options = _group_options(group_parser)
    given = [part for option in options for part in option]
    before = vars(parser.parse_args([group, *given, action, *action_args]))
    after = vars(parser.parse_args([group, action, *action_args, *given]))
    split = vars(parser.parse_args([group, *options[0], action, *action_args,
                                    *[p for o in options[1:] for p in o]]))
    defaults = vars(parser.parse_args([group, action, *action_args]))
    assert before == after == split
    for option in options:  # each option was taken, not left at its default
        dest = option[0].lstrip("-").replace("-", "_")
        parsed = True if len(option) == 1 else json.loads(option[1]) if dest.endswith("options") \
            else option[1]
        assert before[dest] == parsed != defaults[dest]


# -- the same, run as a user would: a process, its output and exit status ----------------------

def _vortex(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "vortex", *argv], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A home with two model versions and an audit log of two entries."""
    import torch

    from vortex.home import HomeLayout
    from vortex.rsi.audit import AuditLog
    from vortex.training.registry import ModelRegistry

    root = tmp_path_factory.mktemp("home")
    layout = HomeLayout(root)
    reg = ModelRegistry(layout.models)
    for seed in range(2):
        reg.register({"w": torch.randn(3, 2, generator=torch.Generator().manual_seed(seed))},
                     {"trigger": "manual"})
    reg.set_active(2, "test")
    (root / "rsi").mkdir()
    log = AuditLog(layout.audit, layout.audit_head)
    log.append("test", n=1)
    log.append("test", n=2)
    return str(root)


@pytest.mark.parametrize("argv", [
    ["models", "list"], ["models", "log"], ["models", "verify"], ["models", "at", "0"],
    ["proposals", "list"], ["audit", "verify"],
])
def test_home_and_json_work_before_and_after_the_action_in_a_process(argv, home):
    group, action = argv[0], argv[1:]
    runs = [_vortex(group, *action, "--json", "--home", home),
            _vortex(group, "--json", "--home", home, *action),
            _vortex(group, "--home", home, *action, "--json")]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
    json.loads(runs[0].stdout)  # --json was taken wherever it stood
    text = [_vortex(group, *action, "--home", home), _vortex(group, "--home", home, *action)]
    assert text[0].stdout == text[1].stdout and text[0].returncode == 0
    assert text[0].stdout != runs[0].stdout


def test_audit_verify_of_a_log_outside_a_home(home, tmp_path):
    from vortex.rsi.audit import AuditLog

    path = tmp_path / "export.jsonl"
    AuditLog(path).append("test", n=1)
    out = _vortex("audit", "verify", "--log", str(path), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["entries"] == 1


def test_status_takes_home_and_json(home):
    out = _vortex("status", "--json", "--home", home)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["models"]["active_version"] == 2 and status["audit"]["entries"] == 2
