"""The package's import structure (issue 13 item 4): layers, arrows and no cycles.

Every module of ``codeclm`` is found on disk (``pkgutil.iter_modules``, nothing is imported) and
its ``import`` statements are read with :mod:`ast`. An import is *module-level* when it runs as the
module is imported (top level, class bodies, ``try``/``if`` blocks) and *lazy* when it sits inside
a function (or under ``if TYPE_CHECKING:``). Then:

* module-level imports form no cycle;
* no import, lazy ones included, goes from a lower layer to a higher one, and modules of two
  different groups of one layer do not import each other (siblings are independent);
* converters of foreign weights (``*hf`` modules) are one-way: no module imports one at module level;
* the string registries (``"module:Name"`` values: how codecs, tasks and pipelines are found
  without imports) name modules and attributes that exist.

The layers are documented in docs/architecture.md; a new module must be given a layer here.
"""

from __future__ import annotations

import ast
import pkgutil
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "codeclm"

# layer -> groups; a group is a list of module prefixes ("codeclm.codec" covers the package and all
# its submodules; the root "codeclm" matches only the package's own __init__). A module may import
# a module of a lower layer, or of its own group.
LAYERS: dict[int, dict[str, tuple[str, ...]]] = {
    0: {"core": ("codeclm", "codeclm.errors", "codeclm.threads", "codeclm.devices", "codeclm.fileio",
                 "codeclm.streaming", "codeclm.pretrained", "codeclm.pipeline_info", "codeclm.audio", "codeclm.spectral",
                 "codeclm.chroma")},
    1: {"codec": ("codeclm.codec",), "tokenizers": ("codeclm.tokenizers",), "metrics": ("codeclm.metrics",),
        "baselines": ("codeclm.baselines",)},
    2: {"compression": ("codeclm.compression",), "lm": ("codeclm.lm",), "data": ("codeclm.data",),
        "asr": ("codeclm.asr",)},
    3: {"training": ("codeclm.training",), "evaluation": ("codeclm.evaluation",),
        "pipelines": ("codeclm.pipelines",)},
    4: {"cli": ()},  # every command-line module: see is_cli
}
CLI_LAYER = 4

# Violations that live in files being rewritten by others; each must still exist (the test fails
# when one disappears, so that the list only shrinks). Format: (importer, imported).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()  # (importer, imported) pairs still against the layering


def is_cli(module: str) -> bool:
    """Command-line modules: codeclm.cli (module or package), */cli.py, */*_cli.py."""
    last = module.rsplit(".", 1)[-1]
    return module == "codeclm.cli" or module.startswith("codeclm.cli.") or last == "cli" or last.endswith("_cli")


def is_converter(module: str) -> bool:
    """Converters of foreign (Hugging Face) weights: codec/hf.py, codec/dac_hf.py, lm/hf.py, lm/dia_hf.py."""
    last = module.rsplit(".", 1)[-1]
    return last == "hf" or last.endswith("_hf")


def layer_of(module: str) -> tuple[int, str] | None:
    if is_cli(module):
        return CLI_LAYER, "cli"
    best = None
    for layer, groups in LAYERS.items():
        for group, prefixes in groups.items():
            for prefix in prefixes:
                hit = module == prefix or (prefix != "codeclm" and module.startswith(prefix + "."))
                if hit and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), layer, group)
    return None if best is None else best[1:]


# -- reading the package ------------------------------------------------------------------------

def _walk(path: Path, prefix: str) -> dict[str, Path]:
    found = {}
    for info in pkgutil.iter_modules([str(path)]):
        name = prefix + info.name
        if info.ispkg:
            found[name] = path / info.name / "__init__.py"
            found.update(_walk(path / info.name, name + "."))
        else:
            found[name] = path / f"{info.name}.py"
    return found


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    """Every module of the package, found on disk: ``{"codeclm.codec.model": Path}``."""
    return {"codeclm": PACKAGE_DIR / "__init__.py", **_walk(PACKAGE_DIR, "codeclm.")}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    lazy: bool  # inside a function (or TYPE_CHECKING): runs on first call, not on import
    line: int

    def __str__(self) -> str:
        path = modules()[self.source].relative_to(ROOT)
        return f"{path}:{self.line}: {self.source} -> {self.target} ({'lazy' if self.lazy else 'module-level'})"


def _target(name: str, known: dict[str, Path]) -> str | None:
    """The module an imported dotted name means: itself, else its longest known parent."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> list[Edge]:
    """codeclm-internal imports of ``module`` (one edge per imported module and statement)."""
    known = modules()
    path = known[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges: list[Edge] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.body:
                    visit_node(sub, True)
                for sub in child.orelse:
                    visit_node(sub, lazy)
                continue
            visit_node(child, child_lazy)

    def visit_node(node: ast.AST, lazy: bool) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                       for alias in node.names]
        for name in dict.fromkeys(targets):
            if name == "codeclm" or name.startswith("codeclm."):
                target = _target(name, known)
                if target is not None and target != module:
                    edges.append(Edge(module, target, lazy, node.lineno))
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            visit(node, lazy)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return edges


@lru_cache(maxsize=1)
def graph() -> tuple[Edge, ...]:
    return tuple(edge for module in sorted(modules()) for edge in imports_of(module))


def violation(edge: Edge) -> str | None:
    """Why ``edge`` breaks the layering (None when it is allowed)."""
    (src_layer, src_group), (dst_layer, dst_group) = layer_of(edge.source), layer_of(edge.target)
    if dst_layer > src_layer:
        return f"layer {src_layer} ({src_group}) imports layer {dst_layer} ({dst_group})"
    if dst_layer == src_layer and dst_group != src_group:
        return f"siblings of layer {src_layer}: {src_group} imports {dst_group}"
    return None


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    succ: dict[str, set[str]] = {}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
        succ.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:  # recursion depth <= number of modules (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(succ):
        if v not in index:
            strongconnect(v)
    return found


# -- the rules ------------------------------------------------------------------------------------

def test_the_walk_finds_the_package_and_its_imports():
    found = modules()
    assert {"codeclm", "codeclm.codec", "codeclm.codec.model", "codeclm.training.config",
            "codeclm.pipelines.core"} <= set(found)
    assert all(path.is_file() for path in found.values())
    by_pair = {(e.source, e.target): e for e in graph()}
    # from-imports of a submodule name the submodule; lazy imports are told apart
    assert not by_pair[("codeclm.codec.model", "codeclm.codec.base")].lazy
    assert by_pair[("codeclm.codec.config", "codeclm.codec.model")].lazy
    assert ("codeclm.training.frame_codec_task", "codeclm.training.codec_task") in by_pair


def test_the_rules_catch_cycles_and_upward_arrows():
    a, b, c = "codeclm.errors", "codeclm.codec.model", "codeclm.pipelines.core"
    assert cycles([Edge(a, b, False, 1), Edge(b, c, False, 1), Edge(c, a, False, 1)]) == [sorted([a, b, c])]
    assert cycles([Edge(a, b, False, 1), Edge(b, c, False, 1)]) == []
    assert violation(Edge(a, b, True, 1)) == "layer 0 (core) imports layer 1 (codec)"
    assert violation(Edge("codeclm.pipelines.clone", "codeclm.evaluation.asr", True, 1)) == \
        "siblings of layer 3: pipelines imports evaluation"
    assert violation(Edge(c, b, False, 1)) is None
    assert violation(Edge("codeclm.compression.cli", "codeclm.cli", False, 1)) is None
    assert layer_of("codeclm.cli.codec") == (CLI_LAYER, "cli") == layer_of("codeclm.pipelines.voice_cli")
    assert layer_of("codeclmx") is None and layer_of("codeclm.codec.hf") == (1, "codec")


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if layer_of(m) is None)
    assert not missing, f"give these modules a layer in LAYERS (and docs/architecture.md): {missing}"


def test_no_module_level_import_cycles():
    found = cycles(e for e in graph() if not e.lazy)
    details = [[str(e) for e in graph() if not e.lazy and e.source in comp and e.target in comp] for comp in found]
    assert not found, "module-level import cycles:\n" + "\n\n".join("\n".join(d) for d in details)


def test_no_import_goes_up_a_layer():
    bad = {(e.source, e.target): f"{e}: {violation(e)}" for e in graph() if violation(e)}
    new = sorted(msg for pair, msg in bad.items() if pair not in KNOWN_VIOLATIONS)
    assert not new, "imports against the layering (docs/architecture.md):\n" + "\n".join(new)


def test_known_violations_still_exist():
    present = {(e.source, e.target) for e in graph() if violation(e)}
    fixed = sorted(KNOWN_VIOLATIONS - present)
    assert not fixed, f"fixed: remove these from KNOWN_VIOLATIONS in {Path(__file__).name}: {fixed}"


def test_converters_are_one_way():
    converters = {m for m in modules() if is_converter(m)}
    assert {"codeclm.codec.hf", "codeclm.codec.dac_hf", "codeclm.lm.hf", "codeclm.lm.dia_hf"} <= converters
    eager = sorted(str(e) for e in graph() if e.target in converters and not e.lazy)
    assert not eager, "converters are imported lazily (or through a registry string) only:\n" + "\n".join(eager)


REGISTRIES = [  # (module, dict name, whether values are "module:Name" or plain module paths)
    ("codeclm.codec.base", "MODELS", True),
    ("codeclm.codec.base", "HF_CONVERTERS", True),
    ("codeclm.training.config", "TASKS", False),
    ("codeclm.pipelines.core", "PIPELINES", True),
    ("codeclm.lm.conditioning", "CONDITIONERS", True),
]


def _top_level_names(module: str) -> set[str]:
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _literal(module: str, name: str):
    """The value of the module-level assignment ``name = <literal>`` in ``module``."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{module} has no module-level {name} = ...")


@pytest.mark.parametrize("module,name,with_attr", REGISTRIES, ids=[f"{m}.{n}" for m, n, _ in REGISTRIES])
def test_registries_name_what_exists(module, name, with_attr):
    entries = _literal(module, name)
    assert entries and all(isinstance(v, str) for v in entries.values())
    src_layer = layer_of(module)[0]
    for key, value in entries.items():
        pattern = r"codeclm(\.\w+)+:\w+" if with_attr else r"codeclm(\.\w+)+"
        assert re.fullmatch(pattern, value), f"{name}[{key!r}] = {value!r}"
        target, _, attr = value.partition(":")
        assert target in modules(), f"{name}[{key!r}] names a missing module {target!r}"
        # a registry points sideways or up (that is what the strings are for), never into the CLI
        assert src_layer <= layer_of(target)[0] < CLI_LAYER, f"{name}[{key!r}] = {value!r}"
        # a task module provides the Recipe and Task the trainer looks up (training/trainer.py)
        for needed in [attr] if attr else ["Recipe", "Task"]:
            assert needed in _top_level_names(target), f"{name}[{key!r}]: {target} defines no {needed!r}"


def test_every_command_group_is_a_module_with_register():
    """codeclm/cli/__init__.py GROUPS: group -> its commands; the module is codeclm.cli.<group>."""
    groups = _literal("codeclm.cli", "GROUPS")
    assert groups
    for group in groups:
        assert f"codeclm.cli.{group}" in modules(), f"GROUPS names {group!r}: no codeclm/cli/{group}.py"
        assert "register" in _top_level_names(f"codeclm.cli.{group}"), f"codeclm/cli/{group}.py has no register()"


DOC = ROOT / "docs" / "architecture.md"


def test_the_document_matches_the_layers_and_the_registries():
    text = DOC.read_text(encoding="utf-8")
    rows = {(int(m.group(1)), m.group(2)) for m in re.finditer(r"^\| (\d) \| (\w+) \|", text, re.M)}
    assert rows == {(layer, group) for layer, groups in LAYERS.items() for group in groups}
    # every quoted registry line ("# file, NAME" then the line) is in that file, inside that registry
    quoted = re.findall(r"```python\n# (\S+), (\w+)\n(.+?)\n```", text, re.S)
    assert len(quoted) >= 4
    for path, name, lines in quoted:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^{name}\b", source, re.M), f"{path} has no {name}"
        for line in lines.splitlines():
            assert line.strip() in source, f"docs/architecture.md quotes {line.strip()!r}, not in {path}"
