"""Full-shape checkpoints without the Hub: random weights at the exact shapes of the models the course
offers (`google/gemma-2b`, `google/gemma-3-1b-pt`, `google/gemma-4-E2B`), written tensor by tensor as bf16
safetensors shards the size of the Hub's, each with a tokenizer whose ids stay inside the model's vocabulary.

The weights are random: these folders prove memory, disk and the code paths (`make rehearse`,
tools/fit/rehearse.py), never quality. Built once into ~/.cache/gemmate/full-shape/<name> (GEMMATE_CACHE moves
it).

The configs are literal copies of the shape-bearing fields of each model card's config.json (SOURCES). Gemma
4's vision and audio towers use transformers 5.23's Gemma4VisionConfig / Gemma4AudioConfig defaults, which are
E2B's:
`python -m tools.fit.full_shape --count` prints the parameter counts to hold against the model cards'
(GUIDE.md section 9: 2,506 M / 1,000 M / 5,104 M).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

SOURCES = {
    "gemma-2b": "https://huggingface.co/google/gemma-2b/blob/main/config.json",
    "gemma-3-4b-pt": "https://huggingface.co/google/gemma-3-4b-pt/blob/main/config.json",
    "gemma-3-1b-pt": "https://huggingface.co/google/gemma-3-1b-pt/blob/main/config.json",
    "gemma-4-E2B": "https://huggingface.co/google/gemma-4-E2B/blob/main/config.json",
}
CONFIGS = {
    "gemma-2b": {
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "vocab_size": 256000,
        "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18, "num_attention_heads": 8,
        "num_key_value_heads": 1, "head_dim": 256, "hidden_act": "gelu", "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "attention_bias": False, "bos_token_id": 2,
        "eos_token_id": 1, "pad_token_id": 0, "torch_dtype": "bfloat16",
    },
    "gemma-3-1b-pt": {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 262144,
        "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000, "rope_theta": 1000000, "sliding_window": 512,
        "sliding_window_pattern": 6,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "torch_dtype": "bfloat16",
    },
    "gemma-4-E2B": {
        "architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
        "tie_word_embeddings": True,
        "text_config": {
            "model_type": "gemma4_text", "vocab_size": 262144, "hidden_size": 1536, "intermediate_size": 6144,
            "num_hidden_layers": 35, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
            "global_head_dim": 512, "num_kv_shared_layers": 20, "hidden_size_per_layer_input": 256,
            "vocab_size_per_layer_input": 262144, "use_double_wide_mlp": True, "sliding_window": 512,
            "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 7,
            "max_position_embeddings": 131072, "final_logit_softcapping": 30.0, "rms_norm_eps": 1e-06,
            "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False, "attention_k_eq_v": False,
            "enable_moe_block": False, "tie_word_embeddings": True,
            "rope_parameters": {
                "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                                   "rope_type": "proportional"},
                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
            },
            "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        },
        "image_token_id": 258880, "audio_token_id": 258881, "video_token_id": 258884,
        "vision_soft_tokens_per_image": 280, "torch_dtype": "bfloat16",
        "vision_config": {}, "audio_config": {},  # transformers 5.23's defaults: E2B's towers (167 M + 305 M)
    },
}
HUB_IDS = {"gemma-2b": "google/gemma-2b", "gemma-3-1b-pt": "google/gemma-3-1b-pt",
           "gemma-4-E2B": "google/gemma-4-E2B", "gemma-3-4b-pt": "google/gemma-3-4b-pt"}
# A model the course does not offer, whose rows no constant of the planner was fitted on: Gemma 3 4B, the
# multimodal Gemma 3 (a SigLIP vision tower beside the text model). Its config.json sets only what differs
# from transformers 5.23's Gemma3TextConfig / SiglipVisionConfig defaults, which are 4B's (8 heads, 4
# key/value heads, head_dim 256, vocabulary 262,208); copied here as the card's file holds it.
CONFIGS["gemma-3-4b-pt"] = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
    "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896,
                      "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False},
    "torch_dtype": "bfloat16",
}
OFFERED = ("gemma-2b", "gemma-3-1b-pt", "gemma-4-E2B")  # the three the course offers (notebook 00)
EMBEDDED_MODEL = "gemma-3-270m"  # the embedded model at its real shape: its converted folder, real weights
MODELS = (*OFFERED, EMBEDDED_MODEL, "gemma-3-4b-pt")  # make rehearse's models, in its tables' order
CALIBRATION = set(OFFERED)  # the rows the planner's constants were calibrated on; the others test it
SHARD_BYTES = 2 * 2**30  # the shards this builder writes (the Hub's: up to ~5 GB; memory while writing ~2 GB)


def root() -> Path:
    from gemmate_lib.models import cache_dir

    return cache_dir() / "full-shape"


def config_of(name: str):
    """The transformers config object of `name` (one of CONFIGS, or EMBEDDED_MODEL: its converted
    folder's)."""
    from transformers import AutoConfig

    if name == EMBEDDED_MODEL:
        from gemmate_lib.models import prepare_embedded

        return AutoConfig.from_pretrained(prepare_embedded(verbose=False))
    fields = dict(CONFIGS[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def meta_model(config):
    """The model as its Hub checkpoint loads (Gemma 4: with its towers), on the meta device: no memory."""
    import transformers

    cls = getattr(transformers, config.architectures[0])
    with torch.device("meta"):
        return cls(config)


def shapes(config) -> dict[str, tuple[torch.Size, bool]]:
    """{name: (shape, saved)} of every parameter the checkpoint holds (a tied LM head is not saved)."""
    model = meta_model(config)
    tied = getattr(config.get_text_config(), "tie_word_embeddings", True)
    return {n: (p.shape, not (tied and n.endswith("lm_head.weight"))) for n, p in model.state_dict().items()}


def tokenizer_for(vocab_size: int, source: Path | None = None):
    """A tokenizer whose ids stay below `vocab_size`: the embedded Gemma 3 270M's (262,144 entries; `source`:
    a folder holding its tokenizer files, as make gpu-wheels packs them), cut to the first `vocab_size`
    entries for gemma-2b's 256,000 (the cut ones are Gemma 3's image and unused tokens)."""
    from transformers import AutoTokenizer

    if source is None:
        from gemmate_lib.models import prepare_embedded

        source = prepare_embedded(verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if len(tokenizer) > vocab_size:
        data = json.loads(tokenizer.backend_tokenizer.to_str())
        data["model"]["vocab"] = {t: i for t, i in data["model"]["vocab"].items() if i < vocab_size}
        kept = data["model"]["vocab"]
        data["model"]["merges"] = [m for m in data["model"]["merges"]
                                   if all(p in kept for p in (m.split(" ") if isinstance(m, str) else m))
                                   and "".join(m.split(" ") if isinstance(m, str) else m) in kept]
        data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < vocab_size]
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                            bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                            unk_token="<unk>")
    return tokenizer, source / "tokenizer.model"


def write_sentencepiece(source: Path, out: Path, vocab_size: int) -> None:
    """The sentencepiece tokenizer.model (llama.cpp's Gemma converters read it), cut to `vocab_size`."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    proto = spm.ModelProto()
    proto.ParseFromString(source.read_bytes())
    while len(proto.pieces) > vocab_size:
        proto.pieces.pop()
    proto.trainer_spec.vocab_size = len(proto.pieces)
    out.write_bytes(proto.SerializeToString())


def build(name: str, folder: Path | None = None, verbose: bool = True, tokenizer_source: Path | None = None,
          device: str = "cpu") -> Path:
    """Write `name`'s full-shape checkpoint once (config, shards, index, tokenizer); return its folder.
    `tokenizer_source`: tokenizer_for's (a bare GPU machine has no embedded model, only its tokenizer);
    `device`: where the random values are drawn ("cuda": seconds instead of minutes, other values)."""
    from safetensors.torch import save_file

    from gemmate_lib.guard_rails.files import atomic_folder

    if name == EMBEDDED_MODEL:  # real weights, already a model folder
        from gemmate_lib.models import prepare_embedded

        return prepare_embedded(verbose=False)
    folder = Path(folder or root() / name)
    if (folder / "model.safetensors.index.json").exists():
        return folder
    config = config_of(name)
    start, generator = time.time(), torch.Generator(device).manual_seed(0)
    with atomic_folder(folder, overwrite=True, what="full-shape checkpoint") as tmp:
        config.save_pretrained(tmp)
        weight_map, shard, shard_bytes, files, total = {}, {}, 0, [], 0

        def flush():
            nonlocal shard, shard_bytes
            if shard:
                file = f"model-{len(files) + 1:05d}.safetensors"
                save_file(shard, str(tmp / file), metadata={"format": "pt"})
                files.append(file)
                weight_map.update(dict.fromkeys(shard, file))
                shard, shard_bytes = {}, 0

        for key, (shape, saved) in shapes(config).items():
            if not saved:
                continue
            tensor = torch.empty(shape, dtype=torch.bfloat16, device=device)
            tensor = tensor.normal_(0.0, 0.02, generator=generator).cpu()  # small as a new model: no overflow
            nbytes = tensor.numel() * 2
            if shard_bytes + nbytes > SHARD_BYTES:
                flush()
            shard[key], shard_bytes, total = tensor, shard_bytes + nbytes, total + nbytes
        flush()
        # the Hub's shard names say how many there are
        renamed = {f: f.replace(".safetensors", f"-of-{len(files):05d}.safetensors") for f in files}
        for old, new in renamed.items():
            os.replace(tmp / old, tmp / new)
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": {k: renamed[f] for k, f in weight_map.items()}},
            indent=1))
        vocab = config.get_text_config().vocab_size
        tokenizer, spm_file = tokenizer_for(vocab, tokenizer_source)
        tokenizer.save_pretrained(tmp)
        write_sentencepiece(spm_file, tmp / "tokenizer.model", vocab)
        (tmp / "FULL_SHAPE.json").write_text(json.dumps(
            {"hub_id": HUB_IDS[name], "config_source": SOURCES[name], "weights": "random (normal, std 0.02)",
             "note": "proves memory, disk and code paths, not quality"}, indent=1))
    if verbose:
        print(f"{name}: {total / 1e9:.2f} GB of bf16 shards in {time.time() - start:.0f} s -> {folder}")
    return folder


def count(name: str) -> dict:
    """Parameter counts of `name` on the meta device: the total and the largest tensor."""
    sizes = shapes(config_of(name))
    numels = {k: s.numel() for k, (s, saved) in sizes.items() if saved}
    largest = max(numels, key=numels.get)
    return {"parameters": sum(numels.values()), "largest": largest, "largest_numel": numels[largest]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(CONFIGS))
    parser.add_argument("--count", action="store_true", help="print parameter counts, write nothing")
    args = parser.parse_args(argv)
    for name in args.names:
        if args.count:
            c = count(name)
            print(f"{name}: {c['parameters'] / 1e6:,.0f} M parameters; largest {c['largest']} "
                  f"({c['largest_numel'] / 1e6:,.0f} M)")
        else:
            build(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
