"""One training path: only training.py builds and runs a trainer, and every way in to training calls
training.train, so a change to how training runs (a dtype cast, a callback, the trainer class) is made
once."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gemmate_lib", "gemmate_cli")  # the library and the command line
TRAINERS = {"Trainer", "SFTTrainer", "CourseSFTTrainer", "sft_trainer"}
WRAPPERS = {  # every way in to training, by file
    "gemmate_lib/training.py": ["train_lora"], "gemmate_lib/methods.py": ["train_arm"],
    "gemmate_lib/temporal/training.py": ["train_temporal"],
    "gemmate_cli/train.py": ["train_lora"],
    "gemmate_cli/train_te.py": ["train_temporal_from_config"]}


def _called(node) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def second_paths(sources: dict[str, str]) -> list[str]:
    """Where a module other than gemmate_lib/training.py builds a trainer or runs one
    (`<...trainer...>.train(...)`)."""
    found = []
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call) or name == "gemmate_lib/training.py":
                continue
            called = _called(node)
            on = ast.unparse(node.func.value).lower() if isinstance(node.func, ast.Attribute) else ""
            if called in TRAINERS or (called == "train" and "trainer" in on):
                found.append(f"{name}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_only_training_py_builds_or_runs_a_trainer():
    sources = {str(p.relative_to(ROOT)): p.read_text() for package in PACKAGES
               for p in (ROOT / package).rglob("*.py")}
    assert second_paths(sources) == []
    # the rule sees a second path: a trainer built, or one run, outside training.py
    seeded = {"gemmate_cli/train.py": "trainer = sft_trainer(m, t, rows, [], cfg, out)\ntrainer.train()\n"}
    assert second_paths(seeded) == ["gemmate_cli/train.py:1 sft_trainer",
                                    "gemmate_cli/train.py:2 trainer.train"]


TARGETS = {"train": "gemmate_lib.training", "train_temporal": "gemmate_lib.temporal.training"}


def imported(scopes) -> dict[str, str]:
    """{name: module} of what `from M import name` brings into the given scopes (the module, the function),
    and {alias: module} of `from gemmate_lib import training`-style imports of a module."""
    names = {}
    for scope in scopes:
        for node in ast.walk(scope):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def training_calls(module: str, tree: ast.Module, function: ast.FunctionDef) -> list[str]:
    """The calls in `function` that resolve to training.train (or 07's train_temporal, a wrapper over it):
    a name imported from its module, `training.train` on that module imported, or, inside that module
    itself, its own top-level function."""
    names = imported([tree, function])
    own = module.removesuffix(".py").replace("/", ".")
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    found = []
    for call in (c for c in ast.walk(function) if isinstance(c, ast.Call)):
        func = call.func
        if isinstance(func, ast.Name) and func.id in TARGETS:
            origin = names.get(func.id) or (f"{own}.{func.id}" if func.id in defined else "")
            if origin == f"{TARGETS[func.id]}.{func.id}":
                found.append(origin)
        elif isinstance(func, ast.Attribute) and func.attr in TARGETS and isinstance(func.value, ast.Name):
            if names.get(func.value.id) == TARGETS[func.attr]:
                found.append(f"{TARGETS[func.attr]}.{func.attr}")
    return found


def functions_of(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    return found | {f"{c.name}.{n.name}": n for c in tree.body if isinstance(c, ast.ClassDef)
                    for n in c.body if isinstance(n, ast.FunctionDef)}


def test_every_way_in_is_a_wrapper_over_training_train():
    for module, names in WRAPPERS.items():
        tree = ast.parse((ROOT / module).read_text())
        for name in names:
            assert training_calls(module, tree, functions_of(tree)[name]), \
                f"{module}:{name} does not call gemmate_lib.training.train"


def test_a_call_named_train_that_is_not_training_train_is_caught():
    """The rule resolves what a call named `train` is: a trainer's own train(), a method, or a train imported
    from elsewhere is not the one training path."""
    for body in ("def train_model(self, model):\n    return self.trainer.train()\n",
                 "def train_model(self, model):\n    from gemmate_lib.methods import train\n"
                 "    return train(model)\n",
                 "def train_model(self, model):\n    train = print\n    return train(model)\n",
                 "def train_model(self, model):\n    from gemmate_lib import methods as training\n"
                 "    return training.train(model)\n"):
        tree = ast.parse(body)
        calls = training_calls("gemmate_cli/train.py", tree, functions_of(tree)["train_model"])
        assert calls == [], body
    good = ("def train_model(self, model):\n    from gemmate_lib.training import train\n"
            "    return train(model)\n")
    tree = ast.parse(good)
    found = training_calls("gemmate_cli/train.py", tree, functions_of(tree)["train_model"])
    assert found == ["gemmate_lib.training.train"]
