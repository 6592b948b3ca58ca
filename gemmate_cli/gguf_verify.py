"""`gemmate export`'s check that llama.cpp runs each GGUF file as transformers runs the merged model (05
writes the same check out for the learner; tests/cli/test_cli_export.py holds the two equal): greedy tokens of
the 16-bit file against transformers', and every file's format, stops, end token, perplexity, size and speed,
in verification.json. The certificate (certificate.py) then scores each level on held-out prompts."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from gemmate_lib.export import load_llama
from gemmate_lib.guard_rails.files import save_json
from gemmate_lib.text_generation import follows_the_format


def llama_greedy(llm, prompt: str, max_new_tokens: int):
    """(new tokens, logits per new token, stopped at EOS) of greedy decoding in llama.cpp."""
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(tokens)
    out, logits = [], []
    for _ in range(max_new_tokens):
        row = np.array(llm.scores[llm.n_tokens - 1])
        nxt = int(row.argmax())
        logits.append(row)
        if nxt == llm.token_eos():
            return out, logits, True
        out.append(nxt)
        llm.eval([nxt])
    return out, logits, False


def hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int):
    """(new tokens, logits per new token, stopped at EOS) of greedy decoding in transformers."""
    import torch

    enc = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.no_grad():
        res = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    new = res.sequences[0, enc["input_ids"].shape[1]:].tolist()
    stopped = bool(new) and new[-1] == tokenizer.eos_token_id
    return (new[:-1] if stopped else new), [lg[0].float().cpu().numpy() for lg in res.logits], stopped


def perplexity(llm, texts) -> float:
    """Perplexity of llama.cpp on `texts` (every token after BOS), from its logits of every position."""
    nll, count = 0.0, 0
    for text in texts:
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)[:512]
        llm.reset()
        llm.eval(tokens)
        scores = np.array(llm.scores[:len(tokens) - 1], dtype=np.float64)  # row i predicts token i + 1
        top = scores.max(1)
        logz = np.log(np.exp(scores - top[:, None]).sum(1)) + top
        nll += float((logz - scores[np.arange(len(scores)), tokens[1:]]).sum())
        count += len(scores)
    return math.exp(nll / max(count, 1))


def verify_gguf(folder, merged, tokenizer, prompts, heldout, max_new_tokens: int = 40) -> dict:
    """llama.cpp loads every GGUF in `folder`: the 16-bit one against the merged transformers model token
    for token, every file for format, perplexity, size and speed. Written to folder/verification.json."""
    folder = Path(folder)
    f16 = folder / "model-f16.gguf"
    llm = load_llama(f16, logits_all=True)
    compare, worst_prefix = [], 0.0
    for prompt in prompts:
        ours, our_logits, our_stop = llama_greedy(llm, prompt, max_new_tokens)
        ref, ref_logits, ref_stop = hf_greedy(merged, tokenizer, prompt, max_new_tokens)
        # the first position where they differ: a token, or the end of the shorter one
        first = next((i for i in range(max(len(ours), len(ref))) if ours[i:i + 1] != ref[i:i + 1]), None)
        # the rounding, where both picked the same token: never at the first difference, whose own logit
        # difference always covers transformers' gap there (so a file of another model would pass)
        agreed = len(our_logits) if first is None else first
        for a, b in zip(our_logits[:agreed], ref_logits[:agreed]):
            worst_prefix = max(worst_prefix, float(abs(a[:len(b)] - b[:len(a)]).max()))
        row = {"prompt": prompt, "identical": first is None, "first_difference": first,
               "stops_llama": our_stop, "stops_transformers": ref_stop, "hf_gap": None}
        if first is not None and first < min(len(ref), len(ours)):
            lg = ref_logits[first]  # how close transformers itself was to llama.cpp's pick
            row["hf_gap"] = float(lg[ref[first]] - lg[ours[first]])
        compare.append(row)
    result = {"max_logit_diff_f16": worst_prefix, "token_match": compare, "files": {}}
    for path in [f16] + sorted(p for p in folder.glob("model-*.gguf") if p != f16):
        llm = llm if path == f16 else load_llama(path, logits_all=True)
        gens, n_tok, seconds = [], 0, 0.0
        for prompt in prompts:
            start = time.time()
            toks, _, stopped = llama_greedy(llm, prompt, max_new_tokens)
            seconds += time.time() - start
            n_tok += len(toks) + stopped
            text = llm.detokenize(toks).decode(errors="replace")
            gens.append({"prompt": prompt, "completion": text, "stopped": stopped,
                         "format": follows_the_format(text, stopped)})
        ppl = perplexity(llm, heldout)
        base = result["files"].get(f16.name, {"perplexity": ppl, "generations": gens})  # the 16-bit file's
        result["files"][path.name] = {
            "size_mib": path.stat().st_size / 2**20, "tokens_per_s": n_tok / seconds,
            "perplexity": ppl, "relative_perplexity": ppl / base["perplexity"],
            "format_kept": sum(g["format"] for g in gens), "stops": sum(g["stopped"] for g in gens),
            # wherever the 16-bit file writes an Author: line and stops, this file does too
            "keeps_f16_format": all(g["format"] or not r["format"]
                                    for g, r in zip(gens, base["generations"])),
            # its end token is the tokenizer's (a lost or wrong one, the classic export bug: it never stops)
            "keeps_eos": llm.token_eos() == tokenizer.eos_token_id,
            "generations": gens}
    # a differing token is accepted as a near-tie when transformers' own gap between the two tokens is within
    # twice the largest logit difference measured where the two runtimes agreed (their rounding, f16 weights)
    result["tolerance"] = 2 * worst_prefix
    result["all_match_or_near_tie"] = all(r["identical"] or r["hf_gap"] is not None
                                          and abs(r["hf_gap"]) <= result["tolerance"] for r in compare)
    save_json(folder / "verification.json", result)
    return result


def summary(result: dict) -> str:
    """The table `gemmate export` prints (05's `gguf-table` cell prints the same)."""
    lines = [f"{'file':22s} {'MiB':>7s} {'tok/s':>7s} {'ppl/f16':>8s}  Author:+stop  stops"]
    for name, f in result["files"].items():
        n = len(f["generations"])
        lines.append(f"{name:22s} {f['size_mib']:7.0f} {f['tokens_per_s']:7.1f} "
                     f"{f['relative_perplexity']:8.3f}  {f['format_kept']} of {n}{'':6s}{f['stops']} of {n}")
    same = sum(r["identical"] for r in result["token_match"])
    lines.append(f"16-bit GGUF vs transformers: {same} of {len(result['token_match'])} greedy generations "
                 f"identical token for token (largest logit difference {result['max_logit_diff_f16']:.3f})")
    return "\n".join(lines) + "\n" + json.dumps({"convert_s": result.get("convert_s"),
                                                 "quantize_s": result.get("quantize_s")})
