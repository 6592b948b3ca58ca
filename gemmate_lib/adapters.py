"""Save and load LoRA adapters as safetensors (03 saves, 04 and 05 load), and whether a push can happen.
`gemmate.json` beside the adapter names its base model, so loading it onto another base is one clear error,
not a wall of size mismatches. Saving is all or nothing (files.atomic_folder)."""
from __future__ import annotations

import json
from pathlib import Path

from gemmate_lib.guard_rails.errors import ModelLoadError, SaveError, TokenError
from gemmate_lib.guard_rails.files import atomic_folder, recover, show_path
from gemmate_lib.guard_rails.hf_token import check_token, get_token


def base_fingerprint(model) -> dict:
    """The base model facts an adapter depends on."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    return {key: getattr(config, key, None) for key in keys}


def write_base_info(model, folder: str | Path, model_name: str) -> Path:
    """gemmate.json beside a saved adapter: the base it was trained on, which `load_adapter` checks."""
    path = Path(folder) / "gemmate.json"
    path.write_text(json.dumps({"base_model": model_name, **base_fingerprint(model)}, indent=2))
    return path


def read_base_info(folder: str | Path) -> dict | None:
    """gemmate.json of a saved adapter (None when there is none); a damaged one is a ModelLoadError."""
    path = Path(folder) / "gemmate.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("base_model"), str):
            raise ValueError("no base_model name in it")
    except ValueError as err:
        raise ModelLoadError(f"{show_path(path)} is damaged ({err})",
                             "save the adapter again (03, or save_adapter), or "
                             "delete gemmate.json to skip the base-model check") from None
    return meta


def save_adapter(model, tokenizer, folder: str | Path, model_name: str, overwrite: bool = False) -> Path:
    """Save adapter weights (safetensors), tokenizer and gemmate.json, all or nothing (03 writes it out)."""
    with atomic_folder(folder, overwrite=overwrite, what="adapter") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_base_info(model, tmp, model_name)
    return Path(folder)


DAMAGED_FIX = ("save it again: run 03_lora_sft (or `gemmate train`) with this run folder; "
               "or download it again if it came from the Hub")


def check_adapter_files(folder: str | Path, fix: str = DAMAGED_FIX) -> Path:
    """`folder`, once its adapter_config.json holds a `peft_type` and its weights file is whole; a copy cut
    short or a failed download is one ModelLoadError naming the file and `fix`, not an error inside peft."""
    folder = Path(folder)
    config, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelLoadError(f"{show_path(config)} is damaged: not UTF-8 text", fix) from None
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{show_path(config)} is damaged: not valid JSON ({err.msg}, line {err.lineno})",
                             fix) from None
    if not isinstance(settings, dict) or "peft_type" not in settings:
        raise ModelLoadError(f"{show_path(config)} is damaged: it holds no adapter settings (no peft_type)",
                             fix)
    if weights.is_file():
        check_safetensors(weights, fix)
    elif not (folder / "adapter_model.bin").is_file():  # an older adapter, pickled, which peft still reads
        raise ModelLoadError(f"{show_path(folder)} has an adapter_config.json "
                             "but no adapter_model.safetensors", fix)
    return folder


def check_safetensors(path: Path, fix: str = DAMAGED_FIX) -> Path:
    """`path`, once safetensors has checked that its header's tensors cover the file exactly (reading the
    header only); a file cut short or not safetensors at all is one ModelLoadError naming it and `fix`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt"):
            pass
    except SafetensorError as err:
        reason = str(err).removeprefix("Error while deserializing header: ")
        raise ModelLoadError(f"{show_path(path)} is cut short or damaged ({reason})", fix) from None
    return path


def check_adapter(base_model, folder: str | Path) -> Path:
    """The adapter folder, once it holds a whole adapter trained on `base_model` (for 04's own
    `PeftModel.from_pretrained`); one clear error for a missing folder, a damaged file or another base."""
    folder = recover(folder)
    if not (folder / "adapter_config.json").exists():
        raise ModelLoadError(f"no adapter in {show_path(folder)}",
                             "run 03_lora_sft first with the same run_dir (it saves the adapter there)")
    check_adapter_files(folder)
    meta = read_base_info(folder)
    if meta and (detail := ", ".join(f"{k}: adapter {meta.get(k)} vs model {v}"
                                     for k, v in base_fingerprint(base_model).items() if meta.get(k) != v)):
        base = meta.get("base_model")
        raise ModelLoadError(f"the adapter in {show_path(folder)} was trained on {base!r}, "
                             f"not on this base model ({detail})",
                             f"load {base!r} as the base model, or train an adapter for this one")
    return folder


def load_adapter(base_model, folder: str | Path, adapter_name: str = "default"):
    """Put the adapter in `folder` on `base_model`; clear errors for a missing folder or another base."""
    from peft import PeftModel

    folder = check_adapter(base_model, folder)
    try:
        return PeftModel.from_pretrained(base_model, folder, adapter_name=adapter_name)
    except RuntimeError as err:  # size mismatch when gemmate.json is missing
        raise ModelLoadError(f"the adapter in {show_path(folder)} does not fit this base model: "
                             f"{str(err)[:200]}", "load the base model the adapter was trained on") from err


def push_problem(repo_id: str | None) -> str | None:
    """Why a push to `repo_id` cannot happen, in one line (no repo_id, no token, a read-only token), or None;
    a malformed repo_id raises SaveError. 03 and 05 call it before their own create_repo and upload_folder."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        return "push skipped: set the parameter repo_id, e.g. repo_id='your-name/gemma-quotes-lora'"
    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("needs a namespace")
    except HFValidationError as err:
        raise SaveError(f"repo_id={repo_id!r} is not a valid Hub repository id ({err})",
                        "use 'your-user-name/repo-name': letters, digits, '-', '_' and '.' only") from err
    if get_token() is None:
        return ("push skipped: no HF_TOKEN. To enable it, add a write token as the HF_TOKEN secret in Colab "
                "(key icon) or the HF_TOKEN environment variable, then rerun this cell")
    try:
        check_token(need_write=True)
    except TokenError as err:
        return f"push failed: {err.problem}. Fix: {err.fix}"
    return None
