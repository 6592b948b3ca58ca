"""Train GemmaTE (LoRA + the temporal projection, through training.train) and measure its use of time against
chance and a nearest-timestamp baseline (07_temporal_encoding; `gemmate train-te`)."""
from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path

import torch

from gemmate_lib.config import CourseConfig
from gemmate_lib.errors import ParameterError
from gemmate_lib.files import save_json
from gemmate_lib.temporal.data import TextDataset, collate_fn, date_of, load_jsonl, parse_date
from gemmate_lib.temporal.model import GemmaTEForCausalLM
from gemmate_lib.temporal.tasks import QUESTION, make_python_questions, python_accuracy, python_baselines
from gemmate_lib.temporal.timestamps import DAY_MS, nearest, to_milliseconds
from gemmate_lib.training import TrainResult, attach_lora, train


def attach_temporal_lora(te: GemmaTEForCausalLM, cfg: CourseConfig) -> GemmaTEForCausalLM:
    """LoRA on the wrapped model (once; the QLoRA recipe when quantized); the projection trains too."""
    te.model = attach_lora(te.model, cfg, quiet=True)
    te.temporal_projection.weight.requires_grad_(True)
    return te


def train_temporal(te: GemmaTEForCausalLM, dataset: TextDataset, cfg: CourseConfig, output_dir: str | Path,
                   pad_token_id: int = 0) -> TrainResult:
    """`training.train` on GemmaTE: timestamps flow from the dataset through collate_fn into forward."""
    return train(te, None, dataset, None, cfg, output_dir,
                 data_collator=partial(collate_fn, pad_token_id=pad_token_id))


def date_accuracy(te: GemmaTEForCausalLM, tokenizer, prompts, timestamps, dates, batch_size: int = 100,
                  max_new_tokens: int = 6):
    """Greedy completions of the dated-notes prompts; returns (DataFrame per prompt, exact-year accuracy). The
    table also says whether each year is within one of the truth (`year_within_1`, the extrapolation goal)."""
    import pandas as pd

    from gemmate_lib.text_generation import generate

    out = generate(te, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                   timestamps=list(timestamps))
    rows = []
    for text, (true_year, true_month) in zip(out.completion, dates):
        year, month = parse_date(text)
        rows.append({"completion": text.strip(), "year": year, "month": month, "true_year": true_year,
                     "true_month": true_month, "year_ok": year == true_year,
                     "year_within_1": year is not None and abs(year - true_year) <= 1,
                     "month_ok": (year, month) == (true_year, true_month)})
    table = pd.DataFrame(rows)
    return table, float(table["year_ok"].mean())


def baselines(notes, split: str = "test") -> dict:
    """What needs no GemmaTE (07) on the held-out `split` ("test", "val" or "far"): chance (one of the split's
    years) and the date of the nearest training timestamp. If that lookup scores as well as the model, the
    task shows that the model reads time, not that it generalizes beyond it."""
    _, timestamps, dates = notes.split(split)
    stamps = sorted(notes.train_timestamps)
    near = [nearest(stamps, ms) for ms in timestamps]
    pairs = [(date_of(guess), tuple(truth)) for guess, truth in zip(near, dates)]  # (year, month) each
    n, years = len(timestamps), len({y for y, _ in dates})
    return {"chance_year": 1 / years, "chance_month_year": 1 / (12 * years),
            "nearest_year": sum(guess[0] == truth[0] for guess, truth in pairs) / n,
            "nearest_year_within_1": sum(abs(guess[0] - truth[0]) <= 1 for guess, truth in pairs) / n,
            "nearest_month_year": sum(guess == truth for guess, truth in pairs) / n,
            "median_gap_days": statistics.median(abs(a - ms) / DAY_MS for a, ms in zip(near, timestamps))}


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


def train_temporal_from_config(cfg: CourseConfig, overwrite: bool = False) -> dict:
    """`gemmate train-te`: GemmaTE on a JSONL of {"text", "timestamp"} or one of 07's tasks (`temporal_task`).
    Saves output_dir/model and train_metrics.json, with a built-in task's held-out "evaluation"."""
    from gemmate_lib.models import load_model, load_tokenizer

    out = Path(cfg.checkpoints.output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ParameterError(f"output_dir {out} exists and is not empty",
                             "pick a new folder or pass --overwrite")
    evaluate = None
    if cfg.temporal.temporal_task == "file":
        if cfg.data.dataset == "embedded":
            raise ParameterError("train-te needs data: dataset='embedded' "
                                 "is the quotes, which have no timestamps",
                                 "pass --dataset notes.jsonl, or --temporal_task dated_notes "
                                 "(or python_releases)")
        texts, stamps = load_jsonl(cfg.data.dataset, cfg.temporal.timestamp_unit)
        source = cfg.data.dataset
    else:
        texts, stamps, prompt_end, evaluate = course_task(cfg.temporal.temporal_task, seed=cfg.train.seed)
        source = f"07's {cfg.temporal.temporal_task} task"
        cfg = cfg.replace(prompt_end=prompt_end)
    tokenizer = load_tokenizer(cfg.model.model_name)
    dataset = TextDataset(texts, tokenizer, stamps, max_length=cfg.train.max_length,
                          prompt_end=cfg.temporal.prompt_end)
    model = load_model(cfg.model.model_name, cfg.precision, cfg.model.quantization,
                       cfg.model.attn_implementation)
    te = attach_temporal_lora(GemmaTEForCausalLM(model, cfg.temporal), cfg)
    print(f"training on {len(dataset)} rows from {source} ({cfg.precision.device}, {cfg.precision.name})",
          flush=True)
    result = train_temporal(te, dataset, cfg, out / "trainer", tokenizer.pad_token_id)
    result.model.save_pretrained(out / "model")  # safetensors, always
    metrics = {"rows": len(dataset), "steps": result.steps, "seconds": round(result.seconds, 1),
               "final_loss": float(result.log["loss"].iloc[-1]) if len(result.log) else None}
    if evaluate is not None:
        metrics["evaluation"] = evaluate(result.model, tokenizer)
    # the guide's torch.save(model.state_dict(), ...), LoRA merged in (last)
    if cfg.checkpoints.save_format == "pt":
        torch.save(result.model.merged_state_dict(), out / "model.pt")
    metrics["config"] = cfg.flat()
    save_json(out / "train_metrics.json", metrics)
    return metrics
