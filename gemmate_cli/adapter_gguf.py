"""The adapter alone as GGUF, for llama.cpp's `--lora` (`gemmate export RUN_DIR --adapter_gguf`,
docs/export.md): a PEFT LoRA adapter's matrices written with gguf's own writer under llama.cpp's tensor names,
a few MB beside one 16-bit GGUF of the base model, instead of a whole merged model per fine-tune. llama.cpp
adds (alpha / r) B A to each adapted weight at run time; loaded with its base (llama-cpp-python's `lora_path`,
`llama-cli -m base.gguf --lora adapter.gguf`) the pair is held to the merged model like every exported file
(certificate.py, the level "f16+lora"). What it cannot carry (trained embeddings or tokens, DoRA, a rank or
alpha per layer) stops with one line: export the merged model instead."""
from __future__ import annotations

import json
import math
from pathlib import Path

from gemmate_cli.llama_server import gguf_fields
from gemmate_lib.guard_rails.errors import ModelLoadError, SaveError
from gemmate_lib.guard_rails.files import show_path

ADAPTER_FILE = "adapter-lora.gguf"
LEVEL = "f16+lora"  # the certificate's name for the base's 16-bit file with the adapter applied
PEFT_PREFIX = "base_model.model."
# PEFT settings the file cannot express: llama.cpp applies one alpha / r to plain LoRA matrices
UNSUPPORTED = {"use_dora": "DoRA's magnitude vectors", "rank_pattern": "a rank per layer",
               "alpha_pattern": "an alpha per layer", "modules_to_save": "fully trained modules",
               "trainable_token_indices": "trained token embeddings"}


def base_architecture(base_gguf) -> tuple[str, int]:
    """(general.architecture, block count) of a base model's GGUF: a missing, foreign or cut-short file is one
    ModelLoadError line (llama_server.gguf_fields), and so is an adapter GGUF passed as the base."""
    value = gguf_fields(base_gguf).get
    arch, kind = value("general.architecture"), value("general.type")
    if arch is None or kind == "adapter" or value(f"{arch}.block_count") is None:
        raise ModelLoadError(f"{show_path(base_gguf)} is not a base model's GGUF (architecture {arch}, "
                             f"type {kind or 'model'})", "pass the 16-bit GGUF of the model the adapter was "
                             "trained on (`gemmate export RUN_DIR --adapter_gguf` writes it)")
    return arch, int(value(f"{arch}.block_count"))


def lora_pairs(adapter_dir) -> tuple[dict, dict]:
    """(adapter_config, {module name: (A, B)}) of a saved PEFT LoRA adapter, module names as the model has
    them ("model.layers.0.self_attn.q_proj"); SaveError when it holds what a llama.cpp LoRA cannot carry."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise SaveError(f"{show_path(adapter_dir)} is a {config.get('peft_type')} adapter; llama.cpp applies "
                        "LoRA adapters only", "export the merged model (`gemmate export RUN_DIR`)")
    held = [what for key, what in UNSUPPORTED.items() if config.get(key)]
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    pairs, other = {}, []
    for name, tensor in weights.items():
        module, _, kind = name.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if kind in ("A.weight", "B.weight"):
            pairs.setdefault(module, [None, None])["AB".index(kind[0])] = tensor
        else:
            other.append(name)
    if other:
        held.append(f"{len(other)} tensors that are not LoRA matrices ({other[0]}, ...)")
    if held:
        raise SaveError(f"the adapter in {show_path(adapter_dir)} holds {', '.join(held)}, which a llama.cpp "
                        "LoRA file cannot carry", "export the merged model instead (`gemmate export RUN_DIR` "
                        "without --adapter_gguf)")
    return config, {module: tuple(ab) for module, ab in pairs.items()}


def write_adapter_gguf(adapter_dir, base_gguf, out_file) -> dict:
    """ADAPTER_FILE for the base model in `base_gguf`: every LoRA pair under the base's tensor name
    (blk.N.attn_q.weight.lora_a / .lora_b, in fp32), alpha so that llama.cpp's alpha / r is PEFT's scale
    (rsLoRA's alpha / sqrt(r) too). A module the base architecture's name map does not know stops with one
    line naming the architecture. Returns {"file", "size_mib", "pairs", "architecture", "alpha", "rank"}."""
    import gguf

    arch, blocks = base_architecture(base_gguf)
    config, pairs = lora_pairs(adapter_dir)
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), blocks)
    rank = int(config["r"])
    scale = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    out_file = Path(out_file)
    tensors = {}
    for module, (a, b) in pairs.items():
        # a multimodal Gemma keeps its text layers under language_model; its GGUF names them as a text model's
        name = names.get_name(module) or names.get_name(module.replace("language_model.", ""))
        if name is None or a is None or b is None:
            raise SaveError(f"llama.cpp's {arch} GGUF has no tensor for the adapted module {module}: this "
                            "adapter cannot be written as a llama.cpp LoRA for it", "export the merged model "
                            "instead (`gemmate export RUN_DIR` without --adapter_gguf)")
        tensors[f"{name}.weight.lora_a"] = a.float().numpy()
        tensors[f"{name}.weight.lora_b"] = b.float().numpy()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_file), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scale * rank)  # llama.cpp scales by alpha / r
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": out_file.name, "size_mib": out_file.stat().st_size / 2**20, "pairs": len(pairs),
            "architecture": arch, "alpha": scale * rank, "rank": rank}


def base_gguf_of(model_name: str, folder, base_gguf=None) -> Path:
    """The base model's 16-bit GGUF for an adapter: `base_gguf` when given (one file serves every fine-tune of
    that base), else llama.cpp's converter on the base's own folder (the Hub snapshot, or the embedded model's
    converted folder), written once to folder/base-f16.gguf."""
    import shutil
    import tempfile

    from gemmate_lib.export import convert, sentencepiece_vocab
    from gemmate_lib.models import resolve_model

    if base_gguf is not None:
        base_architecture(base_gguf)  # missing, foreign, cut short or an adapter: one line now
        return Path(base_gguf)
    out = Path(folder) / "base-f16.gguf"
    if out.exists():
        return out
    where, _ = resolve_model(model_name)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # links to the snapshot: its files stay untouched
        hf = Path(tmp) / "base"
        hf.mkdir()
        for path in Path(where).iterdir():
            if path.is_file():
                (hf / path.name).symlink_to(path.resolve())
        gemma_1 = json.loads((hf / "config.json").read_text()).get("model_type") == "gemma"
        if gemma_1 and not (hf / "tokenizer.model").exists():
            sentencepiece_vocab(hf, model_name)
        convert(hf, Path(tmp) / out.name)
        shutil.move(Path(tmp) / out.name, out)
    return out
