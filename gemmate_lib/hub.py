"""Save and load LoRA adapters in the run folder (safetensors), with a check of the base model.

Taught in 03_lora_sft (saving) and 05_evaluation (loading). Next to the adapter we
write `gemmate.json`: which base model it was trained on, so loading it onto another
base model fails with a clear message instead of a wall of size-mismatch errors.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import ModelLoadError
from .run import show_path

FINGERPRINT = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")


def base_fingerprint(model) -> dict:
    """The base model facts an adapter depends on."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    return {key: getattr(config, key, None) for key in FINGERPRINT}


def save_adapter(model, tokenizer, folder: str | Path, model_id: str, overwrite: bool = False) -> Path:
    """Save adapter weights (safetensors), tokenizer and gemmate.json; all or nothing (temporary folder, then rename)."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ModelLoadError(f"an adapter already exists in {show_path(folder)}",
                             "pass overwrite=True to replace it, or choose another folder")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "gemmate.json").write_text(json.dumps({"base_model": model_id, **base_fingerprint(model)}, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def load_adapter(base_model, folder: str | Path, adapter_name: str = "default"):
    """Put the adapter saved in `folder` on `base_model`; clear errors for a missing folder or another base."""
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise ModelLoadError(f"no adapter in {show_path(folder)}",
                             "run 03_lora_sft first with the same run_dir (it saves the adapter there)")
    meta_file = folder / "gemmate.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        here = base_fingerprint(base_model)
        differs = {k: (meta.get(k), here[k]) for k in FINGERPRINT if meta.get(k) != here[k]}
        if differs:
            detail = ", ".join(f"{k}: adapter {a} vs model {b}" for k, (a, b) in differs.items())
            raise ModelLoadError(f"the adapter in {show_path(folder)} was trained on {meta.get('base_model')!r}, "
                                 f"not on this base model ({detail})",
                                 f"load {meta.get('base_model')!r} as the base model, or train an adapter for this one")
    try:
        return PeftModel.from_pretrained(base_model, folder, adapter_name=adapter_name)
    except RuntimeError as err:  # size mismatch when gemmate.json is missing
        raise ModelLoadError(f"the adapter in {show_path(folder)} does not fit this base model: {str(err)[:200]}",
                             "load the base model the adapter was trained on") from err
