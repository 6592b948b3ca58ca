"""How an exercise's check cell (00-07, gemmate_lib/exercises/__init__.py) judges: PASS, FAIL or NOT RUN YET,
read from files only (the exercise's run folders, the lesson's where it compares), never from names a solution
may rebind. A rerun that also changes a setting its text does not name fails; results of another model never
pass; each measured criterion prints its `Margin`, which `make exercises` collects into docs/exercises.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Margin:
    """How far one measured criterion of a check lies from its threshold."""

    value: float  # signed, in `unit`: above 0 the criterion holds by that much, below 0 it misses by so much
    unit: str  # the check's own unit: "nats", "x" (a ratio), "share", "texts", ...
    what: str  # the measurement and its threshold, e.g. "held-out loss fall 0.21, needs > 0"
    strict: bool = True  # the criterion needs value > 0 (else value >= 0)

    @property
    def holds(self) -> bool:
        return self.value > 0 if self.strict else self.value >= 0

    def __str__(self) -> str:
        return f"{self.value:+.3g} {self.unit} ({self.what})"


def more(value: float, threshold: float, unit: str, what: str, strict: bool = True) -> Margin:
    """The margin of `value > threshold` (`>=` unless strict)."""
    return Margin(float(value) - threshold, unit,
                  f"{what} {rounded(value)}, needs {'>' if strict else '>='} {threshold:g}", strict)


def less(value: float, threshold: float, unit: str, what: str, strict: bool = True) -> Margin:
    """The margin of `value < threshold` (`<=` unless strict)."""
    return Margin(threshold - float(value), unit,
                  f"{what} {rounded(value)}, needs {'<' if strict else '<='} {threshold:g}", strict)


def exercise_verdict(name: str, expectation: str, ran: bool, passed: Callable[[], bool] | bool,
                     how_to_run: str = "", origin: str | None = None) -> str:
    """Print and return exercise `name`'s verdict line: NOT RUN YET unless `ran`, `origin` (results that
    cannot be judged here), else PASS or FAIL by `passed` (a bool, or a callable called once the exercise ran,
    giving `ok` or `(ok, found[, margins])`; each Margin must hold too) and the expectation. An error of the
    learner's files (missing, not JSON or a table, a key missing, a wrong type or value, damaged safetensors)
    gives FAIL with the reason; any other (a bug in the rule) propagates, never read as the learner's FAIL."""
    from safetensors import SafetensorError

    how = f" ({how_to_run})" if how_to_run else ""
    if not ran:
        line = f"exercise {name}: NOT RUN YET{how}"
    elif origin:
        line = f"exercise {name}: {origin}: run it again{how}"
    else:
        try:
            result = passed() if callable(passed) else passed
            ok, found, margins = (*result, [])[:3] if isinstance(result, tuple) else (result, "", [])
            ok = bool(ok) and all(m.holds for m in margins)
        except (OSError, LookupError, TypeError, ValueError, SafetensorError) as err:  # the learner's files
            ok, found, margins = False, f"the results could not be read ({type(err).__name__}: {err})", []
        line = f"exercise {name}: {'PASS' if ok else 'FAIL'}, expected: {expectation}"
        line += f"; found: {found}" if found else ""
        line += "; margin: " + ", ".join(map(str, margins)) if margins else ""
    print(line)
    return line


def has_results(run_dir: str | Path, *names: str) -> bool:
    """True when every file `names` exists in `run_dir` (the exercise's run folder): the exercise ran."""
    return Path(run_dir).is_dir() and all((Path(run_dir) / name).exists() for name in names)


def shaped(value, shape: type, what: str):
    """`value`, once it is a `shape` (dict, list), else a TypeError (the learner's file), before a rule calls
    that shape's methods on it (on another value: an AttributeError, read as the rule's own bug)."""
    if not isinstance(value, shape):
        raise TypeError(f"{what} is a {type(value).__name__}, not a {shape.__name__}")
    return value


def read_json(folder: Path, name: str, shape: type | None = None):
    """The JSON file `name` in `folder` (with `shape`: checked to be one, `shaped`)."""
    value = json.loads((Path(folder) / name).read_text())
    return value if shape is None else shaped(value, shape, name)


def read_csv(folder: Path, name: str, **kwargs):
    import pandas as pd

    return pd.read_csv(Path(folder) / name, **kwargs)


def facts(folder: Path, notebook: str) -> dict:
    """What `notebook` recorded in the folder's manifest.json (its parameters, results); {} if nothing."""
    if not (Path(folder) / "manifest.json").exists():
        return {}
    notebooks = read_json(folder, "manifest.json", dict).get("notebooks", {})
    return shaped(shaped(notebooks, dict, "manifest.json's notebooks").get(notebook, {}), dict,
                  f"manifest.json's entry of {notebook}")


def notebook_model(folder: Path, prefix: str) -> str | None:
    """The model that notebook `prefix` ("03") ran for the run in `folder`: its manifest entry's model, else
    its config's, None when the entry does not say."""
    path = Path(folder) / "manifest.json"
    notebooks = json.loads(path.read_text()).get("notebooks", {}) if path.exists() else {}
    return next((entry.get("model") or entry.get("config", {}).get("model", {}).get("model_name")
                 for stem, entry in notebooks.items() if stem.startswith(prefix + "_")), None)


def recorded_settings(folder: Path, notebook: str) -> dict:
    """Every setting `notebook` recorded for the run in `folder`, by name: 03's config (flat, its groups'
    fields) and each notebook's `settings` (the values its parameters cell gave: 03's part 2, 06, 07)."""
    entry = facts(folder, notebook)
    config = shaped(entry.get("config", {}), dict, f"{notebook}'s config in the manifest")
    flat = {k: v for group in config.values() if isinstance(group, dict) for k, v in group.items()}
    return flat | shaped(entry.get("settings", {}), dict, f"{notebook}'s settings in the manifest")


def rerun_changes(spec: "Exercise", ex: list[Path], lesson: Path) -> list[str]:
    """Each setting that a rerun's runs `ex` and the lesson's run of its notebook both recorded, with another
    value, besides the parameters it names: "name (this run's value, the lesson's value)"."""
    allowed = {"run_dir"} | {k for _, params in spec.parameters for k in params}
    by_folder = {Path(f).name: f for f in ex}
    changed = []
    for stem, params in spec.parameters:
        folder = by_folder.get(Path(str(params.get("run_dir", ""))).name)
        if folder is None:
            continue
        mine, theirs = recorded_settings(folder, stem), recorded_settings(lesson, stem)
        changed += [f"{key} ({mine[key]!r}, the lesson's {theirs[key]!r})"
                    for key in sorted(set(mine) & set(theirs) - allowed) if mine[key] != theirs[key]]
    return list(dict.fromkeys(changed))  # once each, in order


class InRuns(str):
    """A parameter naming a file a solution writes in the runs folder ("ex03_2/my_quotes.jsonl"): the learner
    pastes the path the solution prints, `make exercises` the path where the runner's kernel sees it."""


@dataclass(frozen=True)
class Exercise:
    """One exercise's check, as gemmate_lib.exercises registers it (exercise_spec builds it)."""

    expectation: str  # what the run must show, as the check prints it
    folders: tuple[str, ...]  # the exercise's run folders, under runs/
    results: tuple[str, ...]  # files each of them holds once the exercise ran
    passed: Callable  # (exercise folders, lesson folder) -> (ok, what it found[, margins])
    how_to_run: str
    lesson: tuple[str, ...] = ()  # files the lesson's run folder must hold, when the check compares with it
    # a rerun exercise's runs, in order: (notebook stem, {parameter: value}) each, as its text names them
    parameters: tuple[tuple[str, dict], ...] = ()
    reads: str = ""  # a rerun exercise's: the sections whose output the check reads, as its text names them


def literal(value) -> str:
    """A parameter's value as the exercise's text writes it in the parameters cell: "runs/ex03_1" in double
    quotes, 3e-3 rather than 0.003, lists and dicts in Python's syntax."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and value and abs(value) < 0.01:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def parameters_text(params: dict) -> str:
    """`lora_r = 2`, `run_dir = "runs/ex03_1"`: one run's parameters as its text names them (`dataset` = the
    path solution 2 prints, for a file a solution writes)."""
    return ", ".join(f"`{k}` = the path solution {v.split('/')[0][-1]} prints" if isinstance(v, InRuns)
                     else f"`{k} = {literal(v)}`" for k, v in params.items())


def exercise_spec(name: str, passed: Callable, results: tuple[str, ...] | str, how_to_run: str,
                  expectation: str, folders: tuple[str, ...] = (), lesson: tuple[str, ...] = (),
                  parameters: tuple[tuple[str, dict], ...] = (), shape: type | None = None) -> Exercise:
    """Exercise `name`'s check around `passed(ex, lesson)`: its run folders (`folders` under runs/, by default
    ex03_2 for "03-2") and the lesson's. Where `results` is one JSON file, `passed` gets its content (checked
    to be a `shape`). A rerun gives its `parameters`; its `how_to_run` names the section the check reads."""
    if parameters and "manifest.json" not in lesson:  # a rerun compares its settings with the lesson's
        lesson = (*lesson, "manifest.json")
    one = isinstance(results, str)
    passes = (lambda ex, _: passed(read_json(ex[0], results, shape))) if one else passed
    runs = "; then ".join(f"{stem[:2]} with {parameters_text(params).replace('`', '')}"
                          for stem, params in parameters)
    how = f"set the parameters cell, then Run all: {runs} (the check reads {how_to_run})"
    return Exercise(expectation, folders or ("ex" + name.replace("-", "_"),), (results,) if one else results,
                    passes, how if parameters else how_to_run, lesson, parameters,
                    how_to_run if parameters else "")


EXERCISES: dict[str, Exercise] = {}  # "03-2" -> its check (checks_00_03, checks_04_07 register them)


def exercise(name: str, *args, **kwargs) -> Callable:
    """Register the decorated function as exercise `name`'s check in EXERCISES (exercise_spec's arguments)."""

    def register(passed: Callable) -> Callable:
        EXERCISES[name] = exercise_spec(name, passed, *args, **kwargs)
        return passed

    return register


def rounded(x: float) -> float:
    """A measured value as a verdict line shows it (3 decimals)."""
    return round(float(x), 3)


def _written(path: Path) -> float:
    """When `path` was written: a file's time, a folder's oldest file's."""
    times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return min(times, default=path.stat().st_mtime)


def origin_problem(name: str, spec: Exercise, ex: list[Path], lesson: Path) -> str | None:
    """Why exercise `name`'s results in `ex` cannot be judged against the lesson that runs now ("FROM ANOTHER
    MODEL (...)", "MODEL UNKNOWN (...)"), or None: each folder's ORIGIN names its model and since when it
    holds its results; that model must be this process's (or 00's), and the lesson's where it compares."""
    from gemmate_lib.guard_rails import run_folder
    from gemmate_lib.guard_rails.files import show_path

    current = run_folder.current_model(lesson)
    models = {run_folder.read_origin(folder).get("model") for folder in ex}
    if len(models) > 1 and None not in models:  # runs a and b of one exercise on two models
        return f"FROM ANOTHER MODEL (its runs ran on {' and '.join(sorted(models))})"
    for folder in ex:  # every exercise has a folder: the loop sets `model`
        origin = run_folder.read_origin(folder)
        model = origin.get("model")
        if not model:
            return (f"MODEL UNKNOWN ({show_path(folder)} does not record the model its results come from, "
                    f"so they may be another model's)")
        since = float(origin.get("since") or 0)
        stale = [r for r in spec.results if _written(Path(folder) / r) < since - 2]  # 2 s: file times' grain
        if stale:
            before = (origin.get("before") or {}).get("model")
            was = f"on {before}" if before else "before this folder recorded its model"
            verdict = "FROM ANOTHER MODEL" if before else "MODEL UNKNOWN"
            return f"{verdict} ({show_path(folder)}'s {stale[0]} was written {was}, not on {model})"
        if current and model != current:
            return f"FROM ANOTHER MODEL (ran on {model}, the lesson now runs {current})"
    if spec.lesson:
        theirs = notebook_model(lesson, name[:2])
        if theirs is None:
            return (f"MODEL UNKNOWN (the lesson's run folder does not record which model its {name[:2]} ran: "
                    f"run the lesson's {name[:2]} again)")
        if theirs != model:
            return f"FROM ANOTHER MODEL (ran on {model}, the lesson's run of {name[:2]} on {theirs})"
    return None


def judge_exercise(name: str, spec: Exercise) -> str:
    """What exercise `name`'s check cell does (exercises.exercise_check): find its run folders and the
    lesson's, then print its verdict (exercise_verdict), FAIL when a rerun changed another setting too."""
    from gemmate_lib.guard_rails import run_folder

    ex = [run_folder.get_run_dir(f"runs/{folder}", create=False) for folder in spec.folders]
    lesson = run_folder.get_run_dir(create=False)  # the lesson's run folder (the default one)
    ran = all(has_results(f, *spec.results) for f in ex)
    if spec.lesson:
        ran = ran and lesson not in ex and has_results(lesson, *spec.lesson)
    origin = None
    if ran:
        try:
            origin = origin_problem(name, spec, ex, lesson)
        except Exception as err:  # noqa: BLE001 - a check gives a verdict, it never stops the notebook
            origin = f"MODEL UNKNOWN (its record could not be read: {type(err).__name__})"

    def passed():
        result = spec.passed(ex, lesson)
        changed = rerun_changes(spec, ex, lesson) if spec.parameters else []
        if not changed:
            return result
        ok, found, *margins = result if isinstance(result, tuple) else (result, "")
        also = (f"also changed {'; '.join(changed)}: set it back to the lesson's value, the exercise changes "
                "only the parameters it names")
        return (False, f"{also}; {found}" if found else also, *margins)

    return exercise_verdict(name, spec.expectation, ran, passed, spec.how_to_run, origin)
