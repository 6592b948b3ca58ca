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
    "gemmate_cli/train.py": ["LoraTraining.fit"], "gemmate_cli/train_te.py": ["TemporalTraining.fit"]}
OVER_TRAIN = {"train", "train_temporal"}  # training.train, or 07's wrapper over it


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


def test_every_way_in_is_a_wrapper_over_training_train():
    for module, names in WRAPPERS.items():
        tree = ast.parse((ROOT / module).read_text())
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        functions |= {f"{c.name}.{n.name}": n for c in tree.body if isinstance(c, ast.ClassDef)
                      for n in c.body if isinstance(n, ast.FunctionDef)}  # the commands' `fit` steps
        for name in names:
            calls = {_called(c) for c in ast.walk(functions[name]) if isinstance(c, ast.Call)}
            assert calls & OVER_TRAIN, f"{module}:{name} does not call training.train"
