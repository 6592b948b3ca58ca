"""The shape of the two packages, the library (gemmate_lib: what the notebooks import) and the command line
(gemmate_cli, which imports the library, never the reverse): one builder, no import circle at any folder level
of the checkout, the guard rails (gemmate_lib/guard_rails) importing no lesson module, no reaching into
another module's privates, no import side effects, and one import path for everything (no re-export lists)."""
import ast
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "gemmate_lib"
PACKAGES = ("gemmate_lib", "gemmate_cli")  # the library and the command line
MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"):
           ast.parse(p.read_text()) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
LIB_MODULES = sorted(n for n in MODULES if n.split(".")[0] == "gemmate_lib" and "converter_shim" not in n)
CHECKOUT = ("gemmate_lib", "gemmate_cli", "tools", "scripts", "benchmarks")  # every folder of importable code


def _imports(tree):
    """(module, names) for every `from gemmate_lib... import ...` or `from gemmate_cli... import ...` anywhere
    in the module, also inside functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            yield node.module, [a.name for a in node.names]


def _defined(tree) -> set[str]:
    """The names a module defines at its top level: functions, classes and assigned names (not imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def _imported(tree) -> set[str]:
    return {a.asname or a.name.split(".")[0] for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}


def _sources():
    """(where, syntax tree) of every file that imports the library: its own modules, the tests, tools,
    benchmarks, and the code cells of every notebook."""
    for folder in ("gemmate_lib", "gemmate_cli", "tests", "tools", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield str(path.relative_to(ROOT)), ast.parse(path.read_text())
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                code = "\n".join(line for line in lines if not line.lstrip().startswith(("!", "%")))
                yield f"{path.relative_to(ROOT)} cell {i}", ast.parse(code)


def second_paths(modules: dict, sources) -> list[str]:
    """Each object has one import path, its home: the module that defines it. A module may use another's
    object (`from gemmate_lib.data import split_quote` inside evaluation.py), but nobody may then import it
    from the user (`from gemmate_lib.evaluation import split_quote`), nor alias it at the top of a module
    (`split = data.split_quote`). Returns every import or alias that breaks the rule."""
    defined = {name: _defined(tree) for name, tree in modules.items()}
    found = []
    for where, tree in sources:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in defined:
                found += [f"{where}: from {node.module} import {a.name}" for a in node.names
                          if a.name not in defined[node.module] and f"{node.module}.{a.name}" not in modules]
    for name, tree in modules.items():
        imported = _imported(tree)
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Name, ast.Attribute)):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in imported and (
                        isinstance(node.value, ast.Name) or root.id in {"gemmate_lib", *defined}
                        or any(m.endswith("." + root.id) for m in modules)):
                    found.append(f"{name}: {ast.unparse(node)}")
    return found


def test_each_object_is_imported_from_the_module_that_defines_it_and_nowhere_else():
    assert second_paths(MODULES, _sources()) == []
    # the rule sees a second path: through a module that imports the object, and through a top-level alias
    seeded = {**MODULES, "gemmate_lib.user": ast.parse("from gemmate_lib.data import split_quote\n"
                                                       "from gemmate_lib import data\n"
                                                       "halves = data.split_quote\n")}
    reader = ("tests/reader.py", ast.parse("from gemmate_lib.user import split_quote, halves\n"
                                           "from gemmate_lib.data import split_quote\n"))
    assert second_paths(seeded, [reader, ("gemmate_lib/user.py", seeded["gemmate_lib.user"])]) == [
        "tests/reader.py: from gemmate_lib.user import split_quote",
        "gemmate_lib.user: halves = data.split_quote"]


def missing_attributes(modules: dict, sources) -> list[str]:
    """`module.name` where module is one of the library's or the command line's and name is neither defined
    nor imported at its top level, nor a submodule: a rename that left a caller behind. The tools' make
    targets (make rehearse, make drift, ...) are not in make test, so a call there would fail only when a
    maintainer runs them (tools/fit/rehearse.py called `export._llama` a day after it became load_llama)."""
    names = {name: _defined(tree) | _imported(tree) for name, tree in modules.items()}
    found = []
    for where, tree in sources:
        bound = {}  # a name bound to a module: `from gemmate_lib import export`, `import gemmate_lib.x as x`
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                bound |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in modules}
            elif isinstance(node, ast.Import):
                bound |= {a.asname: a.name for a in node.names if a.asname and a.name in modules}
        # a name also bound otherwise (a variable `config`, an argument `preflight`) may not be the module
        other = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        other |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
                  for a in n.posonlyargs + n.args + n.kwonlyargs}
        bound = {name: module for name, module in bound.items() if name not in other}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) in bound:
                module = bound[node.value.id]
                if node.attr not in names[module] and f"{module}.{node.attr}" not in modules:
                    found.append(f"{where}:{node.lineno}: {module}.{node.attr}")
    return found


def test_every_attribute_read_from_a_library_module_exists_there():
    assert missing_attributes(MODULES, _sources()) == []
    # the rule sees a call by an old name, in a function as in tools/fit/rehearse.py
    caller = ("tools/caller.py", ast.parse("def child():\n    from gemmate_lib import export\n"
                                           "    return export._llama('model.gguf'), export.load_llama\n"))
    assert missing_attributes(MODULES, [caller]) == ["tools/caller.py:3: gemmate_lib.export._llama"]


def test_the_library_imports_itself_absolutely_and_exports_no_lists():
    relative = [name for name, tree in MODULES.items() for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert relative == []
    exported = [name for name, tree in MODULES.items() for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "__all__" for t in node.targets)]
    assert exported == []


def test_no_import_cycles_even_through_function_level_imports():
    graph = {name: {m for m, _ in _imports(tree) if m in MODULES and m != name} for name,
             tree in MODULES.items()}

    def reach(start):
        seen, todo = set(), list(graph[start])
        while todo:
            mod = todo.pop()
            if mod not in seen:
                seen.add(mod)
                todo.extend(graph[mod])
        return seen

    cycles = sorted(name for name in graph if name in reach(name))
    assert cycles == []


def _edges(root: Path, folders=CHECKOUT) -> dict[str, set[str]]:
    """module -> the modules it imports (any import, also inside a function; `from pkg import mod` imports
    pkg.mod), over the importable code of the checkout under `root`."""
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for folder in folders if (root / folder).is_dir() for p in (root / folder).rglob("*.py")
               if "__pycache__" not in p.parts}
    graph = defaultdict(set)
    for name, path in modules.items():
        graph[name]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _child(module: str, folder: tuple[str, ...]) -> str | None:
    """The child of `folder` (its path parts) that holds `module`, or None."""
    parts = module.split(".")
    return parts[len(folder)] if tuple(parts[:len(folder)]) == folder and len(parts) > len(folder) else None


def circles_at_every_level(graph: dict[str, set[str]]) -> list[str]:
    """Import circles the way a reader sees folders: inside each folder, each child (a file, or a subfolder
    taken whole) is one node, and a child imports another when a module under it imports one under the other.
    A cycle among the children of any folder is a circle of files, or a subfolder and a sibling importing
    each other (an import that runs back up). Returns each: "in FOLDER/: a <-> b (module -> module; ...)"."""
    folders = {()} | {tuple(m.split(".")[:k]) for m in graph for k in range(1, len(m.split(".")))}
    found = []
    for folder in sorted(folders):
        ties = defaultdict(list)
        for a, targets in graph.items():
            for b in targets:
                ca, cb = _child(a, folder), _child(b, folder)
                if ca and cb and ca != cb:
                    ties[(ca, cb)].append(f"{a} -> {b}")
        reach = defaultdict(set)  # child -> every child it reaches
        for a, b in ties:
            reach[a].add(b)
        changed = True
        while changed:
            changed = False
            for a in list(reach):
                more = set().union(*(reach[b] for b in reach[a] if b in reach)) - reach[a]
                if more:
                    reach[a] |= more
                    changed = True
        seen = set()
        for a in sorted(reach):
            if a in reach[a] and a not in seen:
                circle = sorted({a} | {b for b in reach[a] if a in reach.get(b, set())})
                seen |= set(circle)
                why = sorted(t for (x, y), ts in ties.items() if x in circle and y in circle for t in ts)
                found.append(f"in {'/'.join(folder) or '.'}/: {' <-> '.join(circle)} ({'; '.join(why)})")
    return found


def test_no_import_circle_at_any_folder_level_of_the_checkout():
    assert circles_at_every_level(_edges(ROOT)) == []
    # the rule sees a circle of two files, and a subfolder and a sibling that import each other
    seeded = {"tools.a": {"tools.b"}, "tools.b": {"tools.a"}, "lib.training": {"lib.temporal.data"},
              "lib.temporal.data": set(), "lib.temporal.training": {"lib.training"}}
    assert circles_at_every_level(seeded) == [
        "in lib/: temporal <-> training (lib.temporal.training -> lib.training; lib.training -> "
        "lib.temporal.data)", "in tools/: a <-> b (tools.a -> tools.b; tools.b -> tools.a)"]


# One child process imports the library, then the command line, and reports to both tests below (two children
# took 16 s of make test): what the library's modules loaded of gemmate_cli, the global state each step left.
PROBE = """import importlib, json, logging, sys, warnings
level = lambda: logging.getLogger('bitsandbytes.backends.cpu.ops').level
before = (list(warnings.filters), level())
for m in {modules!r}:
    importlib.import_module(m)
cli = sorted(k for k in sys.modules if k.split('.')[0] == 'gemmate_cli')
import gemmate_cli.main
after = (list(warnings.filters), level())
import gemmate_lib
gemmate_lib.quiet()
added = [f for f in warnings.filters if f not in after[0]]
print(json.dumps({{"cli": cli, "level_kept": before[1] == after[1],
                  "ours": [repr(f) for f in after[0] if f not in before[0] and 'gemma' in repr(f).lower()],
                  "quiet_level": level(), "quiet_filters": len(added)}}))
"""


@pytest.fixture(scope="module")
def import_probe():
    out = subprocess.run([sys.executable, "-c", PROBE.format(modules=LIB_MODULES)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # over 3 s: make test runs it, make test-fast does not
@pytest.mark.xdist_group("import_probe")
def test_the_library_knows_nothing_of_the_command_line(import_probe):
    """No module of gemmate_lib imports gemmate_cli (also inside a function), and importing every library
    module loads none of it."""
    def cli(node) -> bool:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
            node.module or ""] if isinstance(node, ast.ImportFrom) else []
        return any(n.split(".")[0] == "gemmate_cli" for n in names)

    named = [f"{name}:{node.lineno}" for name in LIB_MODULES for node in ast.walk(MODULES[name]) if cli(node)]
    assert named == []
    assert import_probe["cli"] == []


def test_the_guard_rails_import_no_lesson_module():
    """gemmate_lib/guard_rails lies under every lesson module: the lesson modules import it, it imports none
    of them."""
    inside = [n for n in MODULES if n.startswith("gemmate_lib.guard_rails")]
    assert inside and [f"{n}: {m}" for n in inside for m, _ in _imports(MODULES[n])
                       if not m.startswith("gemmate_lib.guard_rails")] == []


def test_pyproject_installs_every_package_and_the_command():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = sorted(".".join(p.parent.relative_to(ROOT).parts) for package in PACKAGES
                     for p in (ROOT / package).rglob("__init__.py"))
    assert sorted(project["tool"]["setuptools"]["packages"]) == folders
    assert project["project"]["scripts"] == {"gemmate": "gemmate_cli.main:run",
                                             "gemmate-te": "gemmate_cli.main:run_te"}


def test_no_module_imports_another_modules_private_names():
    private = [(name, mod, n) for name, tree in MODULES.items() for mod,
               names in _imports(tree) for n in names
               if n.startswith("_")]
    assert private == []


def test_one_builder_of_the_training_arguments_and_one_type_checker():
    calls = {}
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                    "SFTConfig", "TrainingArguments", "LoraConfig", "BitsAndBytesConfig",
                    "PromptTuningConfig",
                    "PrefixTuningConfig", "IA3Config"):
                calls.setdefault(node.func.id if isinstance(node.func, ast.Name) else node.func.attr,
                                 []).append(name)
    training, models = "gemmate_lib.training", "gemmate_lib.models"
    # 06 writes out its prompt, prefix and IA3 configs; build_methods takes them
    assert calls == {"SFTConfig": [training], "TrainingArguments": [training], "LoraConfig": [training],
                     "BitsAndBytesConfig": [models]}
    checkers = [name for name, tree in MODULES.items() for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_type_hints"]
    # the type hints are read once; config.Settings is the one checker
    assert checkers == ["gemmate_lib.config"]


@pytest.mark.slow  # over 3 s: make test runs it, make test-fast does not
@pytest.mark.xdist_group("import_probe")
def test_importing_the_library_changes_no_global_state(import_probe):
    """Importing every module of the library and the command line adds no warning filter of ours and leaves
    bitsandbytes' logger alone; gemmate_lib.quiet() then adds exactly its four filters and quiets it."""
    import logging

    assert import_probe["level_kept"], "logger level changed"
    assert import_probe["ours"] == []
    assert import_probe["quiet_level"] == logging.ERROR
    assert import_probe["quiet_filters"] == 4  # quiet() adds exactly its four filters


def test_docstrings_name_the_notebook_or_command_that_teaches_each_module():
    for path in (p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert re.search(r"\b0\d_|README|make |gemmate|notebook", doc), path.name


def test_every_module_of_the_library_is_in_its_table_of_contents():
    """gemmate_lib's docstring is the map a reader starts from: each module, in sub-packages too, is in it."""
    import re

    import gemmate_lib

    words = set(re.findall(r"[a-z_0-9]+", gemmate_lib.__doc__))
    missing = sorted(str(p.relative_to(LIB)) for p in LIB.rglob("*.py")
                     if p.stem not in ("__init__", "sitecustomize") and p.stem not in words)
    assert missing == [], f"add these to gemmate_lib/__init__.py's table: {missing}"
