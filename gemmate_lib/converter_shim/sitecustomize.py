"""Loaded only by the Python that runs llama.cpp's converter (`gemmate export`, notebook 05): puts Gemma 4's
`global_head_dim`, which transformers 5.23 keeps in `per_layer_config`, back into the config dictionary the
converter reads (else `KeyError: 'global_head_dim'`, docs/gemma-generations.md). No file is touched."""
try:
    from transformers.models.gemma4 import configuration_gemma4 as _gemma4
except ImportError:  # a transformers without Gemma 4: nothing to mend
    pass
else:
    _to_dict = _gemma4.Gemma4TextConfig.to_dict

    def _with_global_head_dim(self):
        out = _to_dict(self)
        sizes = [layer["head_dim"] for layer in (out.get("per_layer_config") or {}).values()
                 if isinstance(layer, dict) and "head_dim" in layer]
        out.setdefault("global_head_dim", sizes[0] if sizes else out.get("head_dim"))
        return out

    _gemma4.Gemma4TextConfig.to_dict = _with_global_head_dim
