"""What each GGUF level cost (`gemmate export`, docs/export.md): every file of an export, scored against the
merged transformers model it came from, on held-out prompts the fine-tune never trained on. 05 checks its
own export (gguf_verify.py's check, written out); this certificate is the command's, and docs/export.md's
table is one (tools/runners/export_certificate.py).

A dozen greedy tokens can agree while a file's distribution has drifted (a Q4_K_M that writes word salad while
the merged safetensors are coherent is a known export failure), and a greedy split alone does not say whether
rounding flipped a near-tie or the file drifted. So each level gets, over continuations of `n_tokens` tokens
that the merged model wrote greedily (fed to both, teacher-forced, so every position compares the same text):

- the mean and the worst gap between the two log-probabilities of the merged model's token (nats),
- top-1 agreement: the share of positions where the file's most likely token is the merged model's, over all
  positions and over the decisive ones, where the merged model's token leads its runner-up by DECISIVE nats
  or more (a near-tie elsewhere may flip with rounding alone; a random model is all near-ties),
- where greedy decoding from the file first parts from the merged model's text (per prompt),
- the held-out perplexity with a bootstrap 95% interval, and the share of free greedy generations that end the
  quote with one `Author:` line and stop, with a Wilson 95% interval.

Each level is held to BOUNDS (a level llama.cpp names that BOUNDS lacks is reported, not judged): a file
outside its bounds fails the certificate, and `gemmate export` then exits non-zero."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gemmate_lib.guard_rails.files import save_json
from gemmate_lib.stats import bootstrap_ci, wilson

N_TOKENS = 64  # the teacher-forced continuation per prompt
N_PROMPTS = 12  # held-out prompts
PROMPT_WORDS = 4  # "Quote: " and the first words of a held-out quote
# What each level may cost against the merged model, per file: mean and worst log-probability gap (nats) of
# the merged model's token, top-1 agreement, perplexity over the merged model's. Measured on the embedded
# fine-tune (`gemmate export` on 05's run folder, 12 held-out prompts x 64 tokens) and set with room above
# it; docs/export.md says why.
BOUNDS = {
    "f16": {"mean_gap": 0.02, "worst_gap": 0.5, "top1": 0.99, "perplexity_ratio": 1.01},
    "q8_0": {"mean_gap": 0.08, "worst_gap": 1.5, "top1": 0.97, "perplexity_ratio": 1.03},
    "q4_k_m": {"mean_gap": 0.5, "worst_gap": 8.0, "top1": 0.85, "perplexity_ratio": 1.5},
}
# the base's 16-bit file with the adapter GGUF applied at run time (gemmate_cli/adapter_gguf.py): held to the
# merged 16-bit file's bounds, since it should compute the same weights
BOUNDS["f16+lora"] = BOUNDS["f16"]
MERGED = "merged (transformers)"
DECISIVE = 1.0  # nats between the merged model's token and its runner-up: a position where it was sure


def known_losses(model_name: str) -> dict[str, str]:
    """{level: why} for the levels whose loss is known for this base model: the embedded default's weights
    arrived as a Q4_K_M file, so quantizing its merged fine-tune to Q4_K_M again rounds many weights back to
    where they started and a short fine-tune's update can vanish (docs/export.md, "Which quantization")."""
    from gemmate_lib.config import EMBEDDED

    if model_name == EMBEDDED:
        return {"q4_k_m": "the base arrived as Q4_K_M, so re-quantizing rounds the fine-tune's update away"}
    return {}


def level_of(path) -> str:
    """"q4_k_m" for model-q4_k_m.gguf (the names export_gguf writes)."""
    return Path(path).stem.removeprefix("model-").lower()


def held_out_prompts(rows, n: int = N_PROMPTS, words: int = PROMPT_WORDS) -> list[str]:
    """"Quote: <first words>" of the first `n` held-out quotes with more words than that."""
    quotes = [r["quote"].split() for r in rows if len(r["quote"].split()) > words]
    return [f"Quote: {' '.join(q[:words])}" for q in quotes[:n]]


def _log_softmax(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max(-1, keepdims=True)
    return scores - (np.log(np.exp(scores - top).sum(-1, keepdims=True)) + top)


def _token_logprobs(scores, tokens) -> tuple[np.ndarray, np.ndarray]:
    """(log-probability of each row's token, each row's most likely token) of logits `scores` (rows x a
    vocabulary of 262k for Gemma 3): two float32 passes, no float64 copy of the rows."""
    scores = np.asarray(scores, dtype=np.float32)
    top = scores.max(1, keepdims=True)
    logz = top[:, 0].astype(np.float64) + np.log(np.exp(scores - top).sum(1, dtype=np.float64))
    return scores[np.arange(len(tokens)), tokens].astype(np.float64) - logz, scores.argmax(1)


def reference(merged, tokenizer, prompts, n_tokens: int = N_TOKENS) -> list[dict]:
    """Per prompt: its token ids, the merged model's greedy continuation (up to `n_tokens`, its end token
    included when it stops), the merged model's log-probability of each continuation token, and whether its
    token led the runner-up by DECISIVE nats or more there. The continuations are generated as one batch
    (left-padded: on a CPU a step costs about the same for 12 prompts as for one); each is then scored on
    its own, unpadded, as llama.cpp reads it."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True).to(merged.device)
        with torch.no_grad():
            new = merged.generate(**enc, do_sample=False, max_new_tokens=n_tokens,
                                  pad_token_id=tokenizer.pad_token_id)[:, enc["input_ids"].shape[1]:]
    finally:
        tokenizer.padding_side = side
    out = []
    for prompt, row in zip(prompts, new.tolist()):
        ids = tokenizer(prompt)["input_ids"]
        cont = row[:row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row
        with torch.no_grad():
            logits = merged(input_ids=torch.tensor([ids + cont], device=merged.device)).logits[0]
        lp = _log_softmax(logits[len(ids) - 1:len(ids) - 1 + len(cont)].float().cpu().numpy())
        runner_up = np.partition(lp, -2, axis=-1)[:, -2]
        out.append({"prompt": prompt, "ids": ids, "continuation": cont,
                    "logprobs": [float(lp[j, t]) for j, t in enumerate(cont)],
                    "decisive": [bool(lp[j, t] - runner_up[j] >= DECISIVE) for j, t in enumerate(cont)]})
    return out


def _nll(scores, tokens) -> float:
    """The summed negative log-likelihood of `tokens`, row i of the logits `scores` predicting token i."""
    return float(-_token_logprobs(scores, tokens)[0].sum())


def merged_row(merged, tokenizer, refs, texts, max_new_tokens: int) -> dict:
    """The merged model's own perplexity and Author-line share: the row every level is read against."""
    import torch

    from gemmate_lib.text_generation import has_author_line

    nll, counts = [], []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :512].to(merged.device)
        with torch.no_grad():
            logits = merged(input_ids=ids).logits[0, :-1].float().cpu().numpy()
        nll.append(_nll(logits, ids[0, 1:].tolist()))
        counts.append(ids.shape[1] - 1)
    kept = 0
    for ref in refs:  # its greedy text is the reference continuation's start
        new = ref["continuation"][:max_new_tokens]
        stopped = tokenizer.eos_token_id in new
        kept += stopped and has_author_line(tokenizer.decode(new[:new.index(tokenizer.eos_token_id)]
                                                             if stopped else new))
    return _summary_row(nll, counts, kept, len(refs))


def _summary_row(nll, counts, kept: int, n: int) -> dict:
    return {"perplexity": math.exp(sum(nll) / sum(counts)),
            "perplexity_ci95": list(bootstrap_ci(nll, counts, ratio_exp=True)),
            "author_share": kept / n, "author_share_ci95": list(wilson(kept, n)), "prompts": n}


def score_file(llm, refs, texts, max_new_tokens: int) -> dict:
    """One GGUF (a loaded llama_cpp.Llama, logits of every position) against the merged model's references."""
    from gemmate_cli.gguf_verify import llama_greedy
    from gemmate_lib.text_generation import has_author_line

    gaps, agree, decisive, parts = [], [], [], []
    for ref in refs:
        ids, cont = ref["ids"], ref["continuation"]
        llm.reset()
        llm.eval(ids + cont)
        lp, best = _token_logprobs(llm.scores[len(ids) - 1:len(ids) - 1 + len(cont)], cont)
        same = [int(best[j]) == t for j, t in enumerate(cont)]
        gaps += [abs(float(lp[j]) - ref["logprobs"][j]) for j in range(len(cont))]
        agree += same
        decisive += [s for s, d in zip(same, ref["decisive"]) if d]
        parts.append(next((j for j, s in enumerate(same) if not s), None))
    nll, counts = [], []
    for text in texts:
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)[:512]
        llm.reset()
        llm.eval(tokens)
        nll.append(_nll(llm.scores[:len(tokens) - 1], tokens[1:]))
        counts.append(len(tokens) - 1)
    kept = 0
    for ref in refs:
        toks, _, stopped = llama_greedy(llm, ref["prompt"], max_new_tokens)
        kept += stopped and has_author_line(llm.detokenize(toks).decode(errors="replace"))
    return {**_summary_row(nll, counts, kept, len(refs)),
            "mean_gap": float(np.mean(gaps)), "worst_gap": float(np.max(gaps)), "top1": float(np.mean(agree)),
            "top1_decisive": float(np.mean(decisive)) if decisive else None, "decisive": len(decisive),
            "tokens": len(agree),
            "first_part": parts, "parted": sum(p is not None for p in parts)}


def judge(level: str, row: dict, merged: dict) -> list[str]:
    """The bounds a level's figures leave ([] when none, or when BOUNDS states none for the level)."""
    bounds = BOUNDS.get(level)
    if bounds is None:
        return []
    ratio = row["perplexity"] / merged["perplexity"]
    out = []
    if row["mean_gap"] > bounds["mean_gap"]:
        out.append(f"mean gap {row['mean_gap']:.3f} > {bounds['mean_gap']}")
    if row["worst_gap"] > bounds["worst_gap"]:
        out.append(f"worst gap {row['worst_gap']:.2f} > {bounds['worst_gap']}")
    if row["top1_decisive"] is not None and row["top1_decisive"] < bounds["top1"]:
        out.append(f"top-1 agreement where the merged model was sure {row['top1_decisive']:.1%} "
                   f"< {bounds['top1']:.0%}")
    if ratio > bounds["perplexity_ratio"]:
        out.append(f"perplexity {ratio:.3f}x the merged model's > {bounds['perplexity_ratio']}x")
    return out


def certify(folder, merged, tokenizer, prompts, texts, n_tokens: int = N_TOKENS, max_new_tokens: int = 40,
            files=None, excused: dict[str, str] | None = None, adapter: tuple | None = None) -> dict:
    """The certificate of every GGUF in `folder` (or `files`), written to folder/certificate.json: per level
    its figures, its bounds and what it failed ("failed": [] passes). "passed" is true when every level is
    within its bounds, except the levels `excused` names with the reason their loss is known (known_losses);
    the table still shows them, with the reason. `adapter`: (the base's 16-bit GGUF, the adapter GGUF), scored
    as the level "f16+lora", its size the adapter file's."""
    excused = dict(excused or {})
    from gemmate_lib.export import load_llama

    folder = Path(folder)
    refs = reference(merged, tokenizer, prompts, n_tokens)
    result = {"n_tokens": n_tokens, "prompts": list(prompts), "held_out_texts": len(texts),
              "merged": merged_row(merged, tokenizer, refs, texts, max_new_tokens), "levels": {}}
    paths = [Path(f) for f in files] if files else sorted(folder.glob("model-*.gguf"), key=_size,
                                                          reverse=True)
    runs = [(level_of(path), path, None) for path in paths]
    if adapter:
        runs.append(("f16+lora", Path(adapter[0]), Path(adapter[1])))
    for level, path, lora in runs:
        llm = load_llama(path, logits_all=True, lora_path=lora)
        try:
            row = score_file(llm, refs, texts, max_new_tokens)
        finally:
            llm.close()
        row.update(file=f"{path.name} + {lora.name}" if lora else path.name,
                   size_mib=(lora or path).stat().st_size / 2**20, bounds=BOUNDS.get(level),
                   failed=judge(level, row, result["merged"]), excused=excused.get(level))
        result["levels"][level] = row
    result["passed"] = all(not row["failed"] or row["excused"] for row in result["levels"].values())
    save_json(folder / "certificate.json", result)
    return result


def _size(path: Path) -> int:
    return path.stat().st_size


def table(result: dict) -> str:
    """"What each level cost": one row per level under the merged model's, as `gemmate export` prints it and
    docs/export.md shows it (markdown)."""
    m = result["merged"]
    head = ("| level | MiB | mean gap | worst gap | top-1 (where sure) | first split (prompts parted) "
            "| perplexity (95% CI) | Author: + stop (95% CI) | verdict |")
    rows = [head, "|" + "---|" * 9,
            f"| {MERGED} | | | | | | {_ppl(m)} | {_share(m)} | reference |"]
    for level, r in result["levels"].items():
        split = min((p for p in r["first_part"] if p is not None), default=None)
        verdict = ("not judged (no bounds for this level)" if r["bounds"] is None
                   else "within bounds" if not r["failed"] else "outside bounds: " + "; ".join(r["failed"])
                   + (f" (known: {r['excused']})" if r.get("excused") else " FAIL"))
        rows.append(f"| {level} | {r['size_mib']:.0f} | {r['mean_gap']:.3f} | {r['worst_gap']:.2f} "
                    f"| {r['top1']:.1%} ({_pct(r['top1_decisive'])}) "
                    f"| {'-' if split is None else f'token {split}'} ({r['parted']} of "
                    f"{len(r['first_part'])}) | {_ppl(r)} | {_share(r)} | {verdict} |")
    return "\n".join(rows)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ppl(row: dict) -> str:
    low, high = row["perplexity_ci95"]
    return f"{row['perplexity']:.2f} ({low:.2f}-{high:.2f})"


def _share(row: dict) -> str:
    low, high = row["author_share_ci95"]
    return f"{row['author_share']:.0%} ({low:.0%}-{high:.0%})"
