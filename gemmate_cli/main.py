"""`gemmate train | train-te | evaluate | generate | hpo | serve | export` (also `python -m gemmate_cli
...`): the course as commands, taught in docs/command-line.md. Each reads one config: a YAML file
(`--config`), then `--key value` flags, parsed once (parser.py). The library does the work; errors print one
line."""
from __future__ import annotations

import json
import sys

from gemmate_cli.errors import run_cli
from gemmate_cli.parser import parse


def main(argv: list[str] | None = None) -> int:
    """Parse, run one command, print its result as JSON (rank 0 only under DDP)."""
    from gemmate_lib import quiet

    args, cfg = parse(list(sys.argv[1:] if argv is None else argv))  # every setting checked, no model loaded
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
        # None: a metric with nothing to count (no held-out author also in training)
        result = {m: None if v["value"] is None else round(v["value"], 4) for m, v in scores.items()}
    elif args.command == "generate":
        from gemmate_cli.commands import generate_from_config

        for row in generate_from_config(cfg).itertuples():
            print(f"--- {row.prompt}{row.completion}\n")
    elif args.command == "serve":
        from gemmate_cli.serve import run_server, served_model

        run_server([served_model(d) for d in args.run_dirs], args.host, args.port, args.max_tokens_limit)
    elif args.command == "export":
        from gemmate_cli.certificate import table
        from gemmate_cli.commands import export_and_verify
        from gemmate_cli.gguf_verify import summary

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
