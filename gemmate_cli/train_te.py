"""`gemmate train-te` (docs/gemmate-temporal.md): GemmaTE on a JSONL of {text, timestamp} or one of
07's tasks, read top to bottom in train_temporal_from_config: the steps of `gemmate train` (train.py), with
GemmaTE's data, model and saving."""
from __future__ import annotations

from pathlib import Path

import torch

from gemmate_cli.settings import CommandConfig
from gemmate_cli.train import check_output_dir, last_logged, load_base, save_metrics
from gemmate_lib.guard_rails.errors import DataError, ParameterError
from gemmate_lib.temporal.data import TextDataset
from gemmate_lib.temporal.model import GemmaTEForCausalLM
from gemmate_lib.temporal.tasks import QUESTION, make_python_questions, python_accuracy, python_baselines
from gemmate_lib.temporal.timestamps import to_milliseconds
from gemmate_lib.temporal.training import attach_temporal_lora, baselines, date_accuracy, train_temporal


def train_temporal_from_config(cfg: CommandConfig) -> dict:
    """`gemmate train-te` (and scripts/finetune.py): saves output_dir/model (and model.pt with save_format
    pt); returns the metrics, with a built-in task's "evaluation", also output_dir/train_metrics.json."""
    from gemmate_lib.models import load_tokenizer

    out = Path(cfg.checkpoints.output_dir)
    if cfg.command.temporal_task == "file" and cfg.course.data.dataset == "embedded":  # before any load
        raise ParameterError("train-te needs data: dataset='embedded' is the quotes, which have no "
                             "timestamps", "pass --dataset notes.jsonl, or --temporal_task dated_notes "
                             "(or python_releases)")
    tokenizer = load_tokenizer(cfg.course.model.model_name)
    cfg, dataset, source, evaluate = temporal_data(cfg, tokenizer)  # before the model: bad data stops here
    check_output_dir(out, resuming=False)
    if cfg.checkpoints.save_format == "pt" and (quantization := cfg.course.model.quantization) != "none":
        raise ParameterError(f"save_format pt merges LoRA into the base's weights, and a {quantization} base "
                             "would hold packed 4-bit weights that the guide's load_state_dict cannot read",
                             "pass --quantization none for model.pt, or keep output_dir/model (safetensors), "
                             "which GemmaTEForCausalLM.from_pretrained reloads")
    c = cfg.checkpoints
    if unused := [name for name, given in (("use_wandb", cfg.command.use_wandb),
                                           ("resume_from_checkpoint", c.resume_from_checkpoint),
                                           ("early_stopping_patience", c.early_stopping_patience),
                                           ("sync_to_storage", c.sync_to_storage),
                                           ("load_from_storage", c.load_from_storage)) if given]:
        raise ParameterError(f"train-te does not use {', '.join(unused)}: only gemmate train does",
                             "leave it out of train-te's flags and config, or train with gemmate train")
    if cfg.checkpoints.save_strategy == "no":  # no checkpoints, as asked (07's task settings save every 50)
        cfg = cfg.replace(save_steps=0)
    course = cfg.course
    te = attach_temporal_lora(GemmaTEForCausalLM(load_base(cfg), course.temporal), course)
    print(f"training on {len(dataset)} rows from {source} ({course.precision.device}, "
          f"{course.precision.name})", flush=True)
    result = train_temporal(te, dataset, course, out / "trainer", tokenizer.pad_token_id)
    result.model.save_pretrained(out / "model")  # safetensors, always
    metrics = {"rows": len(dataset), "steps": result.steps, "seconds": round(result.seconds, 1),
               "final_loss": last_logged(result.log, "loss")}
    if evaluate is not None:
        metrics["evaluation"] = evaluate(result.model, tokenizer)
    # the guide's torch.save(model.state_dict(), ...), LoRA merged in (last)
    if cfg.checkpoints.save_format == "pt":
        torch.save(merged_state_dict(result.model), out / "model.pt")
    return save_metrics(out, metrics | {"config": cfg.flat()})



def merged_state_dict(te: GemmaTEForCausalLM) -> dict:
    """A plain state dict with LoRA merged in (--save_format pt) for `load_state_dict` on a fresh
    GemmaTEForCausalLM. Call it last: merging changes the model in place."""
    model = te.model.merge_and_unload() if hasattr(te.model, "merge_and_unload") else te.model
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["temporal_projection.weight"] = te.temporal_projection.weight.detach()
    return state



def temporal_data(cfg: CommandConfig, tokenizer) -> tuple:
    """(cfg, the TextDataset, where its rows come from, the task's evaluate or None): the JSONL of `dataset`
    (temporal_task "file"), or one of 07's tasks, whose prompt end the returned cfg takes."""
    course, task = cfg.course, cfg.command.temporal_task
    evaluate = None
    if task == "file":
        texts, stamps = load_jsonl(course.data.dataset, cfg.command.timestamp_unit)
        source = course.data.dataset
    else:
        texts, stamps, prompt_end, evaluate = course_task(task, seed=course.train.seed)
        source = f"07's {task} task"
        cfg = cfg.replace(prompt_end=prompt_end)
    dataset = TextDataset(texts, tokenizer, stamps, max_length=cfg.course.train.max_length,
                          prompt_end=cfg.course.temporal.prompt_end)
    return cfg, dataset, source, evaluate



def course_task(name: str, seed: int = 0, constant_date: str = "2017-01-01") -> tuple:
    """07's "dated_notes" (train 2007-2020; test, then extrapolation to 2021-2026) or "python_releases" for
    `gemmate train-te --temporal_task NAME`: (texts, ms timestamps, the prompt end that loss starts after,
    evaluate(te, tokenizer) -> dict of held-out metrics and baselines)."""
    if name == "python_releases":
        questions = make_python_questions(seed=seed)

        def evaluate_python(te, tokenizer) -> dict:
            _, test = python_accuracy(te, tokenizer, questions, questions.test_timestamps)
            _, constant = python_accuracy(te, tokenizer, questions, questions.test_timestamps,
                                          asked_at=float(to_milliseconds(constant_date)))
            return {"test": test, "constant_timestamp": constant,
                    "baselines": python_baselines(questions, questions.test_timestamps)}

        return questions.train_texts, questions.train_timestamps, QUESTION, evaluate_python
    if name == "dated_notes":
        from gemmate_lib.data import load_quotes
        from gemmate_lib.temporal.data import PROMPT_END, make_dated_notes

        quotes = load_quotes()
        notes = make_dated_notes([r["quote"] for r in quotes.train + quotes.held_out], seed=seed)

        def evaluate_notes(te, tokenizer) -> dict:
            out = {}
            for split, label in (("test", "test"), ("far", "extrapolation")):
                table, year = date_accuracy(te, tokenizer, *notes.split(split))
                out[label] = {"year_accuracy": year, "year_within_1": float(table.year_within_1.mean()),
                              "month_year_accuracy": float(table.month_ok.mean()), "n": len(table),
                              "baselines": baselines(notes, split)}
            return out

        return notes.train_texts, notes.train_timestamps, PROMPT_END, evaluate_notes
    raise ValueError(f"no course task {name!r}")



def load_jsonl(path: str | Path, unit: str | None = None) -> tuple[list[str], list[float]]:
    """Read `{"text": ..., "timestamp": ...}` rows (data.read_records); a bad row is an error with its line
    number. `unit` ("s", "ms", "us", "ns") says what bare numbers are; a row's "timestamp_unit" wins."""
    from gemmate_lib.data import broken_text, read_records

    texts, stamps = [], []
    name = Path(path).name
    for number, row in read_records(path, required=("text", "timestamp")):
        if not isinstance(row.get("text"), str) or not row["text"].strip() or "timestamp" not in row:
            raise DataError(f"{name} line {number} lacks a \"text\" or \"timestamp\" field",
                            'each line must look like {"text": "...", "timestamp": 1400000000000}')
        if broken := broken_text(row["text"]):
            raise DataError(f"{name} line {number}: its text {broken}",
                            "fix or delete that line (the file's exporter wrote broken text)")
        try:
            stamps.append(float(to_milliseconds(row["timestamp"], row.get("timestamp_unit", unit))))
        except DataError as err:
            raise DataError(f"{name} line {number}: {err.problem}", err.fix) from None
        texts.append(row["text"])
    return texts, stamps
