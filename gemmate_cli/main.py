"""`gemmate train | train-te | evaluate | generate | hpo | serve | export` (also `python -m gemmate_cli
...`): the course as commands, taught in docs/command-line.md. Each reads one config: a YAML file
(`--config`), then `--key value` flags. The library does the work; errors print one line."""
from __future__ import annotations

import argparse
import difflib
import json
import math
import sys

from gemmate_cli.errors import run_cli
from gemmate_cli.settings import ORDER, SETTINGS, CommandConfig, load_config
from gemmate_lib.hardware import pick_precision
from gemmate_lib.housekeeping.errors import HardwareError, ParameterError

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


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line and its fix (argparse's own is the whole usage first)."""

    def error(self, message):
        fix = f"`{self.prog} --help` lists the options and their values"
        if message.startswith("unrecognized arguments:"):  # the top parser's: the command is not known here
            words = [w.split("=")[0][2:] for w in message.split(":", 1)[1].split() if w.startswith("--")]
            close = [m for w in words for m in difflib.get_close_matches(w, [*ORDER, *COMMAND_OPTIONS], 1)]
            fix = (f"did you mean --{close[0]}? " if close else "") + "`gemmate COMMAND --help` lists them"
        self.exit(2, f"error: {self.prog}: {message}\n  Fix: {fix}\n")


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


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per COMMANDS entry, each with --config, every setting (transformers' HfArgumentParser
    builds them from the settings dataclasses, their help and groups) and its own EXTRA arguments."""
    parser = Parser(prog="gemmate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    settings = settings_options()
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[settings])
        p.add_argument("--config", help="YAML file of settings (see configs/); flags override it")
        for option, keywords in ((o, k) for command, o, k in EXTRA if command == name):
            p.add_argument(option, **keywords)
    return parser


def settings_options() -> argparse.ArgumentParser:
    """The settings' options, for the subcommands to inherit. Each keeps its text: the settings' one parser
    (config.Settings.coerce) types and checks it with the YAML file's values, so a bad flag gets the same one
    line as the same bad YAML key. The help shows each default; choices show as the value's name."""
    options = SETTINGS.parser(add_help=False)
    for action in options._actions:
        if action.dest in SETTINGS.fields and action.option_strings[0] == f"--{action.dest}":
            f = SETTINGS.fields[action.dest]
            default = SETTINGS.default(f.name)
            shown = ",".join(default) if isinstance(default, list) else str(default)
            action.help = f"{f.metadata['help']} [default: {shown or 'none'}]".replace("%", "%%")
            action.type, action.choices, action.metavar = None, None, _metavar(f, default)
            if action.nargs == "+" and f.name not in SETTINGS.free_text:
                action.nargs = None  # one word, a,b for several: a list flag never swallows RUN_DIR
    return options


def _metavar(f, default) -> str:
    choices = f.metadata.get("choices") or ((True, False) if isinstance(default, bool) else None)
    return "{" + ",".join(str(c).lower() for c in choices) + "}" if choices else f.name.split("_")[-1].upper()


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
    """The config of a parsed command line: the YAML file, then the flags."""
    overrides = {key: getattr(args, key) for key in ORDER if getattr(args, key) is not None}
    if getattr(args, "fp16", False):
        if pick_precision().device != "cuda":
            raise HardwareError("--fp16 needs a CUDA GPU and none is visible",
                                "drop --fp16 (the CPU picks bf16 or fp32)")
        overrides["dtype"] = "fp16"
    task = "temporal" if args.command == "train-te" else "quotes"
    return load_config(args.config, overrides, task=task)


def main(argv: list[str] | None = None) -> int:
    """Parse, run one command, print its result as JSON (rank 0 only under DDP)."""
    from gemmate_lib import quiet

    args = build_parser().parse_args(join_negative_numbers(list(sys.argv[1:] if argv is None else argv)))
    check_options(args)
    cfg = config_from_args(args)  # every setting checked before the heavy imports and any model load
    quiet()  # before bitsandbytes is imported: its optional-kernel notice is noise
    from gemmate_cli.train import world
    result = None  # the commands that print as they go leave it None
    if args.command == "train":
        from gemmate_cli.train import train_from_config

        result = train_from_config(cfg)
    elif args.command == "train-te":
        from gemmate_cli.train_te import train_temporal_from_config

        result = train_temporal_from_config(cfg)
    elif args.command == "evaluate":
        from gemmate_cli.commands import evaluate_from_config

        scores = evaluate_from_config(cfg)["models"]["fine-tuned"]
        result = {m: round(v["value"], 4) for m, v in scores.items()}
    elif args.command == "generate":
        from gemmate_cli.commands import generate_from_config

        for row in generate_from_config(cfg).itertuples():
            print(f"--- {row.prompt}{row.completion}\n")
    elif args.command == "serve":
        from gemmate_cli.serve import run_server, served_model

        run_server([served_model(d) for d in args.run_dirs], args.host, args.port, args.max_tokens_limit)
    elif args.command == "export":
        from gemmate_cli.commands import export_and_verify
        from gemmate_lib.certificate import table
        from gemmate_lib.export import summary

        exported = export_and_verify(args.run_dir, cfg, args.quantize,
                                     adapter=args.adapter_gguf or args.base_gguf is not None,
                                     base_gguf=args.base_gguf)
        print(summary(exported))
        print(table(exported["certificate"]))
        if not exported["certificate"]["passed"]:
            print("a GGUF level is outside its bounds against the merged model (table above, "
                  "gguf/certificate.json): export again, or keep a higher level (--quantize q8_0 q6_k)",
                  file=sys.stderr)
            return 1
    else:
        from gemmate_cli.hpo import search

        result = search(cfg, args.n_trials, args.timeout)
    if result is not None and world()[0] == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1, default=str))
    return 0


def run() -> int:
    """Entry point of `gemmate`: main() inside the one error wrapper."""
    return run_cli(main)


def run_te() -> int:
    """Entry point of `gemmate-te`, the alias of `gemmate train-te`."""
    return run_cli(main, ["train-te", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(run())
