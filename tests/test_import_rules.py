"""The import rules that keep the layers apart.

Every ``helpers`` package sits on one declared layer; an import (anywhere in
a module: at the top, inside a function, under ``TYPE_CHECKING``) may only
reach its own layer or a lower one, and the packages import each other
without a circle. Read from the source with :mod:`ast`, so an upward import
cannot hide inside a function. Besides: the correlation engine, the audit,
the figures and the reports import no torch (they run on result files,
quickly, anywhere), and data knows no model.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: bottom to top; a package may import its own layer and those below
LAYERS: list[tuple[str, set[str]]] = [
    ("leaves", {"lifetime", "runlock", "memorization"}),
    ("primitives", {"common", "parallel", "layout"}),
    ("settings, checkpoints, data", {"config", "checkpoints", "training", "data"}),
    ("raw data, sampling, engine", {"phantom", "sampling", "correlation"}),
    ("models, audit, fit measures, sweep folders", {"stylegan", "diffusion", "audit", "fit", "sweep"}),
    ("controls", {"optimal_denoiser"}),
    ("model registry", {"models"}),
    ("criteria, fit of every run, figures, plan", {"criteria", "run_fit", "figures", "plan"}),
    ("step runner, reports", {"steps", "sweep_figures", "finding", "report", "report_checks", "verify"}),
    ("the runner of the notebooks", {"pipeline"}),
]
LAYER = {package: level for level, (_, packages) in enumerate(LAYERS) for package in packages}

NO_TORCH = ["helpers.config", "helpers.common", "helpers.data", "helpers.phantom", "helpers.correlation",
            "helpers.audit", "helpers.memorization", "helpers.figures", "helpers.sweep_figures",
            "helpers.report", "helpers.models", "helpers.criteria", "helpers.run_fit", "helpers.sweep", "helpers.parallel"]


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, helpers.X…)`` of every import of a helpers module in ``path``, wherever it stands."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "helpers"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "helpers":
                continue
            if target == "helpers":  # from helpers import x / from . import x (at the top): the packages named
                out += [(node.lineno, f"helpers.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Package → packages it imports, and every import that breaks a rule."""
    graph: dict[str, set[str]] = {}
    problems = []
    for path in sorted((SRC / "helpers").rglob("*.py")):
        source = package_of(".".join(_module_name(path)))
        if source is None:
            continue  # helpers/__init__.py
        graph.setdefault(source, set())
        if source not in LAYER:
            problems.append(f"helpers.{source} ({path.relative_to(SRC)}) has no layer in LAYERS")
            continue
        for line, module in imports_of(path):
            target = package_of(module)
            if target is None or target == source:
                continue
            graph[source].add(target)
            if target not in LAYER:
                problems.append(f"{path.relative_to(SRC)}:{line} imports helpers.{target}, which has no layer")
            elif LAYER[target] > LAYER[source]:
                problems.append(f"{path.relative_to(SRC)}:{line} imports helpers.{target} "
                                f"({LAYERS[LAYER[target]][0]}) from the lower layer {LAYERS[LAYER[source]][0]!r}")
    return graph, problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_keeps_to_the_layers():
    graph, problems = package_graph()
    assert not problems, "\n".join(problems)
    assert set(graph) <= set(LAYER), f"packages without a layer: {sorted(set(graph) - set(LAYER))}"


def test_no_import_circles():
    graph, _ = package_graph()
    assert cycles(graph) == []


def test_the_rule_sees_imports_inside_functions(tmp_path):
    """The checker itself: an upward import inside a function is found, and a circle is one."""
    module = tmp_path / "helpers" / "sampling.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from . import steps\n    from .stylegan import x\n")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        assert imports_of(module) == [(2, "helpers.steps"), (3, "helpers.stylegan")]
    finally:
        SRC = saved
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", NO_TORCH)
def test_module_imports_no_torch_and_no_model(module):
    code = (f"import sys, {module}; "
            "bad = [m for m in ('torch', 'cupy', 'diffusers', 'helpers.stylegan', 'helpers.diffusion') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"{module} imports {done.stdout.strip()} {done.stderr[-500:]}"



def shadowed_submodules(package: Path, src: Path = SRC) -> list[str]:
    """Names a package's ``__init__.py`` binds to something other than its
    submodule of that name (``from .cli import audit`` beside ``audit.py``):
    then ``helpers.x.name`` is not the module ``import helpers.x.name`` loads."""
    submodules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | \
                 {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    out = []
    for node in ast.parse((package / "__init__.py").read_text()).body:
        if isinstance(node, ast.ImportFrom):
            own = node.level == 1 and node.module is None   # from . import sub: the submodule itself
            bound = [] if own else [a.asname or a.name for a in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound = [node.name]
        elif isinstance(node, ast.Assign):
            bound = [t.id for t in node.targets if isinstance(t, ast.Name)]
        else:
            continue
        out += [f"{package.relative_to(src).as_posix()}/__init__.py:{node.lineno} {name}"
                for name in bound if name in submodules]
    return out


def test_no_package_hides_a_submodule_behind_a_name(tmp_path):
    found = [hit for init in sorted((SRC / "helpers").rglob("__init__.py")) for hit in shadowed_submodules(init.parent)]
    assert not found, "rename the submodule for what it holds:\n" + "\n".join(found)
    # the checker itself: helpers.audit as it was (a function `audit` from .cli beside audit.py)
    package = tmp_path / "helpers" / "audit"
    package.mkdir(parents=True)
    for name in ("audit.py", "cli.py"):
        (package / name).write_text("")
    (package / "__init__.py").write_text("from . import cli\nfrom .audit import run\nfrom .cli import audit, main\n")
    assert shadowed_submodules(package, tmp_path) == ["helpers/audit/__init__.py:3 audit"]
