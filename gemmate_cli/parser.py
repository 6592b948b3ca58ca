"""`gemmate`'s one parse (docs/command-line.md), TRL's TrlParser pattern: the YAML file of --config
sets the options' defaults, then the flags are parsed over them, so one HfArgumentParser pass reads a flag's
text and a YAML file's value alike. The settings' one check (config.Settings.coerce, through
settings.command_config) then names a bad value and its fix: the same line for a flag and for a YAML key."""
from __future__ import annotations

import argparse
import difflib
import math
import types
import typing

from transformers import HfArgumentParser

from gemmate_cli.settings import ORDER, SETTINGS, CommandConfig, command_config, read_config
from gemmate_lib.guard_rails.errors import HardwareError, ParameterError
from gemmate_lib.hardware import pick_precision

COMMANDS = {"train": "LoRA SFT on the quotes, with checkpoints and resume",
            "train-te": "GemmaTE (LoRA + temporal projection) on a JSONL of {text, timestamp}",
            "evaluate": "04's metrics of the trained adapter on the "
                        "held-out split -> output_dir/metrics.json",
            "generate": "greedy completions of --prompts with the trained adapter",
            "hpo": "an Optuna search over learning rate, LoRA r / alpha / dropout and batch size",
            "serve": "the merged fine-tuned model of run folders "
                     "behind transformers serve (OpenAI-compatible)",
            "export": "the run's merged fine-tune as 16-bit and quantized GGUF files (llama.cpp, Ollama), "
                      "verified in llama.cpp -> RUN_DIR/gguf"}
EXTRA = [  # each command's own arguments beside the settings: (command, name, argparse's keywords)
    ("hpo", "--n_trials", dict(type=int, default=8, help="number of trials")),
    ("hpo", "--timeout", dict(type=float, default=None, help="stop starting trials after this many seconds")),
    ("serve", "run_dirs", dict(nargs="+", metavar="RUN_DIR", help="run folders with merged/ or adapter/")),
    ("serve", "--host", dict(default="127.0.0.1", help="listen address (default: this machine only)")),
    ("serve", "--port", dict(type=int, default=8000, help="listen port")),
    ("serve", "--max_tokens_limit", dict(type=int, default=512, help="largest max_tokens a request may ask")),
    ("export", "run_dir", dict(metavar="RUN_DIR", help="a run folder with adapter/ (03, `gemmate train`)")),
    ("export", "--quantize", dict(nargs="*", default=["q8_0", "q4_k_m"], metavar="TYPE", help="llama.cpp "
                                  "quantization types (default: q8_0 q4_k_m; none: only 16-bit)")),
    ("export", "--adapter_gguf", dict(action="store_true", help="also the adapter alone as a llama.cpp LoRA "
                                      "GGUF (a few MB), with the base model's 16-bit GGUF to apply it to")),
    ("export", "--base_gguf", dict(default=None, metavar="PATH", help="with --adapter_gguf: the base model's "
                                   "16-bit GGUF from an earlier export (default: convert the base once)")),
    ("train-te", "--fp16", dict(action="store_true",
                                help="fp16 mixed precision (the guide's flag; needs a GPU)")),
    # accepted as before, and changes nothing now: the training commands' one output_dir rule
    # (train.check_output_dir) writes into a non-empty folder unless it holds a finished run
    ("train-te", "--overwrite", dict(action="store_true", help="write into a non-empty output_dir"))]
COMMAND_OPTIONS = tuple(name[2:] for _, name, keywords in EXTRA
                        if keywords.get("type") in (int, float))  # numeric options beside the settings
FREE_TEXT = ("prompts",)  # list settings whose words keep their commas: one word, one item


class Parser(HfArgumentParser):
    """TRL's TrlParser for the course: an HfArgumentParser over `dataclass_types` (a command's settings
    groups), with `parse_args_and_config`. Each setting's option reads its text (setting_text), shows the
    setting's default in --help, and is left out of the namespace when neither a flag nor the YAML file gives
    it: the profile chooses it then (config.course_config). A usage error is one line and its fix (argparse's
    own prints the whole usage first)."""

    def __init__(self, dataclass_types=(), **kwargs):
        super().__init__(list(dataclass_types), formatter_class=argparse.HelpFormatter, **kwargs)
        for action in self._actions:
            if action.dest in SETTINGS.fields:  # --fast_loss and --no_fast_loss alike
                action.default = argparse.SUPPRESS
            if action.dest in SETTINGS.fields and action.option_strings[0] == f"--{action.dest}":
                f = SETTINGS.fields[action.dest]
                default = SETTINGS.default(f.name)
                shown = ",".join(default) if isinstance(default, list) else str(default)
                action.help = f"{f.metadata['help']} [default: {shown or 'none'}]".replace("%", "%%")
                # the choices are the settings' check's (config.Settings.coerce): argparse's would print usage
                action.type, action.choices = setting_text(f.name, action.type), None
                action.metavar = _metavar(f, default)
                if action.nargs == "+" and f.name not in FREE_TEXT:
                    action.nargs = None  # one word, a,b for several: a list flag never swallows RUN_DIR

    def parse_args_and_config(self, argv: list[str]) -> argparse.Namespace:
        """TrlParser.parse_args_and_config: the YAML file's values (settings.read_config) become the options'
        defaults, then the flags are parsed over them: a flag overrides the file."""
        argv = join_negative_numbers(argv)
        path = config_path(argv)
        if path is not None:
            self.set_defaults_with_config(**read_config(path))
        args = self.parse_args(argv)
        if getattr(args, "config", None) != path:  # argparse took an abbreviation, such as --conf, for it
            raise ParameterError(f"--config is abbreviated, so {args.config} was not read",
                                 f"write it out: --config {args.config}")
        return args

    def set_defaults_with_config(self, **values) -> None:
        """TrlParser's: each value becomes its option's default, in every command's parser. A string is read
        as a flag's text would be (argparse passes a default string through the option's type)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    parser.set_defaults_with_config(**values)
            elif action.dest in values:
                action.default = values[action.dest]

    def error(self, message):
        fix = f"`{self.prog} --help` lists the options and their values"
        if message.startswith("unrecognized arguments:"):  # the top parser's: the command is not known here
            words = [w.split("=")[0][2:] for w in message.split(":", 1)[1].split() if w.startswith("--")]
            close = [m for w in words for m in difflib.get_close_matches(w, [*ORDER, *COMMAND_OPTIONS], 1)]
            fix = (f"did you mean --{close[0]}? " if close else "") + "`gemmate COMMAND --help` lists them"
        self.exit(2, f"error: {self.prog}: {message}\n  Fix: {fix}\n")


def setting_text(name: str, parse):
    """How setting `name`'s option reads text, a flag's word or a YAML string (PyYAML reads 1e-4 as one):
    HfArgumentParser's own `parse` (int, float, its string_to_bool, str); "none" or "null" as None where None
    is a value; `a,b` as a list (one word stays a str where a str is a value: all-linear). Text that does not
    parse stays text, and the settings' one check names it and the fix."""
    hint = SETTINGS.hints[name]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    listed = any(typing.get_origin(o) is list for o in options) and name not in FREE_TEXT

    def read(text: str):
        if name in SETTINGS.nullable and text.lower() in ("none", "null"):
            return None
        if listed:
            return text if str in options and "," not in text else \
                [w.strip() for w in text.split(",") if w.strip()]
        try:
            return parse(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            return text

    return read


def _metavar(f, default) -> str:
    choices = f.metadata.get("choices") or ((True, False) if isinstance(default, bool) else None)
    return "{" + ",".join(str(c).lower() for c in choices) + "}" if choices else f.name.split("_")[-1].upper()


def build_parser() -> Parser:
    """One subcommand per COMMANDS entry, each a Parser over every setting (HfArgumentParser builds the
    options from the settings dataclasses, their help and groups), --config and its own EXTRA arguments."""
    parser = Parser(prog="gemmate", description=f"`gemmate {' | '.join(COMMANDS)}`: the course as commands "
                    "(also `python -m gemmate_cli ...`), taught in docs/command-line.md")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           dataclass_types=SETTINGS.groups.values())
        p.add_argument("--config", help="YAML file of settings (see configs/); flags override it")
        for option, keywords in ((o, k) for command, o, k in EXTRA if command == name):
            p.add_argument(option, **keywords)
    return parser


def config_path(argv: list[str]) -> str | None:
    """The YAML file after --config (the last one, as argparse keeps the last), None without one."""
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):  # as argparse
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def join_negative_numbers(argv: list[str]) -> list[str]:
    """`--learning_rate -1e-4` as `--learning_rate=-1e-4`: argparse reads -1e-4 or -inf as an option, so they
    never reached the config's validator."""
    out: list[str] = []
    for arg in argv:
        option = out[-1][2:].replace("-", "_") if out and out[-1].startswith("--") and "=" not in out[-1] \
            else None  # --learning-rate too, HfArgumentParser's other spelling
        if option in (*ORDER, *COMMAND_OPTIONS) and arg.startswith("-") and _is_number(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_options(args: argparse.Namespace) -> None:
    """The numeric options of hpo and serve, which are not settings (config.validate checks those)."""
    rules = [  # (option, the test its value passes, what a failing value must be, the fix), in order
        ("n_trials", lambda v: v >= 1, "must be at least 1", "pass --n_trials 8 (or more)"),
        ("timeout", lambda v: v is None or math.isfinite(v) and v > 0, "must be a positive number of seconds",
         "pass e.g. --timeout 3600, or leave it out"),
        ("port", lambda v: 1 <= v <= 65535, "must lie in 1-65535", "pass e.g. --port 8000 (the default)"),
        ("max_tokens_limit", lambda v: v >= 1, "must be at least 1",
         "pass e.g. --max_tokens_limit 512 (the default)")]
    for name, passes, must, fix in rules:
        if hasattr(args, name) and not passes(getattr(args, name)):
            raise ParameterError(f"option --{name}={getattr(args, name)} {must}", fix)


def config_from_args(args: argparse.Namespace) -> CommandConfig:
    """The config of a parsed command line: the settings it gives (the YAML file's, then the flags'), typed
    by the parse, checked by settings.command_config; the rest from the profile."""
    given = {name: getattr(args, name) for name in ORDER if hasattr(args, name)}
    if getattr(args, "fp16", False):
        if pick_precision().device != "cuda":
            raise HardwareError("--fp16 needs a CUDA GPU and none is visible",
                                "drop --fp16 (the CPU picks bf16 or fp32)")
        given["dtype"] = "fp16"
    return command_config("temporal" if args.command == "train-te" else "quotes", **given)


def parse(argv: list[str]) -> tuple[argparse.Namespace, CommandConfig]:
    """The command line, parsed once (flags over the YAML file) and checked: (the arguments, the config).
    Every setting is checked here, before the heavy imports and any model load."""
    args = build_parser().parse_args_and_config(argv)
    check_options(args)
    return args, config_from_args(args)


def load_config(path=None, flags: dict | None = None, task: str = "quotes") -> CommandConfig:
    """The config of `gemmate train --config PATH --NAME TEXT ...` (train-te's for task "temporal"), by the
    same one parse: `flags` maps setting names to a flag's text."""
    argv = ["train-te" if task == "temporal" else "train", *(["--config", str(path)] if path else []),
            *(f"--{name}={text}" for name, text in (flags or {}).items())]
    return parse(argv)[1]
