"""The layers of docs/architecture.md, checked on the source: no module imports from a layer above it,
and every module / tensor hook is registered by the engine."""

import ast
import re
from pathlib import Path

import fisherkit

SRC = Path(fisherkit.__file__).parent

# lower number = lower layer; a module may import its own layer or below (stats stands apart)
LAYERS = {
    "errors": 0, "_version": 0, "params": 0, "choices": 0,
    "likelihoods": 1, "datasets": 1,
    "engine": 2,
    "curvature": 3,
    "distributed": 4,
    "api": 5,
    "optim": 6, "continual": 6, "active": 6, "laplace": 6, "merge": 6, "prune": 6, "integrations": 6,
    "studies": 7,
    "report": 8, "commands": 8, "cli": 8, "__main__": 8, "__init__": 8,
}


def _layer(top: str) -> int | None:
    return LAYERS.get(top)


def _imports(path: Path):
    """(line, top-level fisherkit module) for every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(SRC).with_suffix("").parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = list(parts[:-1])[: len(parts) - node.level]
                mod = base + (node.module.split(".") if node.module else [])
                if not mod:  # "from .. import x" at the top: x is the module
                    for a in node.names:
                        yield node.lineno, a.name
                    continue
                if len(mod) == 1 and node.module is None:
                    for a in node.names:
                        yield node.lineno, a.name if len(base) == 0 else mod[0]
                    continue
                yield node.lineno, mod[0]
            elif node.module and node.module.split(".")[0] == "fisherkit":
                sub = node.module.split(".")
                yield node.lineno, sub[1] if len(sub) > 1 else "__init__"
        elif isinstance(node, ast.Import):
            for a in node.names:
                sub = a.name.split(".")
                if sub[0] == "fisherkit" and len(sub) > 1:
                    yield node.lineno, sub[1]


def test_no_module_imports_from_a_layer_above_it():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        if top == "stats":
            continue
        mine = _layer(top)
        assert mine is not None, f"{path}: add its package to LAYERS in this test and to docs/architecture.md"
        for line, target in _imports(path):
            theirs = _layer(target)
            if target == "stats":
                theirs = 1  # classical statistics stand apart: anything may use them
            if theirs is not None and theirs > mine:
                problems.append(f"{path.relative_to(SRC)}:{line} ({top}, layer {mine}) imports {target} (layer {theirs})")
    assert not problems, "\n".join(problems)


def test_stats_stands_apart():
    for path in (SRC / "stats").rglob("*.py"):
        for line, target in _imports(path):
            assert target in ("stats", "errors", "_version", "choices", "params"), f"{path}:{line} imports {target}"


HOOK = re.compile(r"\.register_(forward_hook|forward_pre_hook|hook|full_backward_hook|full_backward_pre_hook)\(")


def test_hooks_are_registered_by_the_engine_only():
    outside = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] != "engine"
               for i, line in enumerate(p.read_text().splitlines(), 1) if HOOK.search(line)]
    assert not outside, f"hooks registered outside fisherkit.engine: {outside}"


def test_the_library_does_not_import_studies_or_matplotlib():
    """Importing the library packages loads no study (experiment drivers, plots) and no matplotlib."""
    import subprocess
    import sys

    code = ("import sys, fisherkit, fisherkit.optim, fisherkit.continual, fisherkit.active, fisherkit.curvature, "
            "fisherkit.engine.collect; print([m for m in sys.modules if 'studies' in m or m.startswith('matplotlib')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
