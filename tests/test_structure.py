"""The library's shape: one builder, no import cycles, no
reaching into another module's privates, no import side
effects, and one import path for everything (no re-export lists)."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "gemmate_lib"
MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"):
           ast.parse(p.read_text()) for p in LIB.rglob("*.py")}


def _imports(tree):
    """(module, names) for every `from gemmate_lib... import
    ...` anywhere in the module, also inside functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gemmate_lib"):
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
    for folder in ("gemmate_lib", "tests", "tools", "benchmarks"):
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
    training, methods, models = "gemmate_lib.training", "gemmate_lib.methods", "gemmate_lib.models"
    assert calls == {"SFTConfig": [training], "TrainingArguments": [training], "LoraConfig": [training],
                     "BitsAndBytesConfig": [models], "PromptTuningConfig": [methods],
                     "PrefixTuningConfig": [methods], "IA3Config": [methods]}
    checkers = [name for name, tree in MODULES.items() for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_type_hints"]
    # the type hints are read once; config.coerce is the one checker
    assert checkers == ["gemmate_lib.config"]


def test_importing_the_library_changes_no_global_state():
    code = ("import logging, warnings\n"
            "before = (list(warnings.filters), logging.getLogger('bitsandbytes.backends.cpu.ops').level)\n"
            "import gemmate_lib, gemmate_lib.training, gemmate_lib.models, gemmate_lib.temporal.model\n"
            "import gemmate_cli.main, gemmate_lib.evaluation, gemmate_lib.adapters\n"
            "after = (list(warnings.filters), logging.getLogger('bitsandbytes.backends.cpu.ops').level)\n"
            "assert before[1] == after[1], 'logger level changed'\n"
            "ours = [f for f in after[0] if f not in before[0] and 'gemma' in repr(f).lower()]\n"
            "assert ours == [], ours\n"
            "gemmate_lib.quiet()\n"
            "assert logging.getLogger('bitsandbytes.backends.cpu.ops').level == logging.ERROR\n"
            "print(len([f for f in warnings.filters if f not in after[0]]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == 4  # quiet() adds exactly its four filters


def test_docstrings_name_the_notebook_or_command_that_teaches_each_module():
    for path in LIB.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert re.search(r"\b0\d_|README|make |gemmate|notebook", doc), path.name
