"""GemmaTE: a time signal for Gemma (07_temporal_encoding, docs/gemmate-temporal.md): fixed features of signed
log-days, and a zero-started projection that adds them to every token embedding."""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from gemmate_lib.adapters import base_fingerprint, check_adapter_files, check_safetensors
from gemmate_lib.config import TemporalSettings
from gemmate_lib.fast_loss import causal_lm_loss
from gemmate_lib.generations import text_setting
from gemmate_lib.guard_rails.errors import DataError, ModelLoadError, ParameterError
from gemmate_lib.guard_rails.files import atomic_folder, recover
from gemmate_lib.temporal.timestamps import signed_log_days, to_milliseconds

LOG_RANGE = 12.0  # |signed log-days| stays below ~10.6 in the accepted range; features divide by this
FORMAT_VERSION = 2  # of gemmate_te.json: 2 adds the base model's fingerprint (checked on load)
ENCODER_FIELDS = ("temporal_scale", "temporal_dim", "temporal_min_period", "temporal_max_period",
                  "temporal_reference_ms")  # the settings that define the features (saved with the model)


class TemporalEncoder(nn.Module):
    """Fixed (untrained) features of a timestamp: [s/(12 tau), sign, sin(w_k s), cos(w_k s)]."""

    def __init__(self, settings: TemporalSettings):
        super().__init__()
        dim, scale = settings.temporal_dim, settings.temporal_scale
        if dim < 4 or dim % 2:
            raise ParameterError(f"temporal_dim={dim} must be even and >= 4", "use 32, 64 or 128")
        if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale > 0):
            raise ParameterError(f"temporal_scale (tau)={scale!r} must be a positive number", "use 1.0")
        self.settings = settings
        periods = np.geomspace(settings.temporal_max_period, settings.temporal_min_period, (dim - 2) // 2)
        # float64, not a buffer: the model's `.half()` or `.to(torch.bfloat16)` must not round it
        self.frequencies = 2 * np.pi / periods

    def forward(self, timestamps) -> torch.Tensor:
        tau = self.settings.temporal_scale
        x = signed_log_days(to_milliseconds(timestamps), self.settings.temporal_reference_ms)
        s = tau * x
        angles = s[..., None] * torch.from_numpy(self.frequencies)
        return torch.cat([(s / (tau * LOG_RANGE))[..., None], torch.sign(x)[..., None], torch.sin(angles),
                          torch.cos(angles)], dim=-1).to(torch.float32)


class GemmaTEForCausalLM(nn.Module):
    """Any transformers causal LM (Gemma 3 270M, gemma-2b, NF4 or not, with or without LoRA) plus time.
    `forward` and `generate` take `timestamps`: one per sequence ([batch]) or per token ([batch, seq]), None
    for "now". The only new weights are `temporal_projection` (dim -> hidden, zero at start)."""

    def __init__(self, model, settings: TemporalSettings | None = None):
        super().__init__()
        self.model = model
        self.settings = settings or TemporalSettings()
        self.encoder = TemporalEncoder(self.settings)
        hidden = int(text_setting(model, "hidden_size"))
        self.temporal_projection = nn.Linear(self.settings.temporal_dim, hidden, bias=False)
        embeddings = model.get_input_embeddings()
        nn.init.zeros_(self.temporal_projection.to(embeddings.weight.device).weight)
        self._time = None  # [batch, hidden] or [batch, seq, hidden] while a forward/generate runs
        self._warned_now = False  # the "no timestamps: now" warning is given once
        self.fast_loss = False  # forward(labels=...) returns only the loss, LM head on labelled tokens
        if (previous := getattr(embeddings, "_gemmate_te_hook", None)) is not None:
            previous.remove()  # wrapped before: the newest wrapper owns the embedding, time is added once
        self._hook = embeddings._gemmate_te_hook = embeddings.register_forward_hook(self._add_time)
        self.train(model.training)  # follow the wrapped model: eval() after loading, so no dropout

    @property
    def config(self):  # config ... gradient_checkpointing_enable: what Trainer and PEFT look for
        return self.model.config

    @property
    def device(self) -> torch.device:
        """Where the weights are (the GemmaTE guide moves batches with `.to(model.device)`)."""
        return self.temporal_projection.weight.device

    @property
    def generation_config(self):
        return self.model.generation_config

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def gradient_checkpointing_enable(self, **kwargs):
        self.model.gradient_checkpointing_enable(**kwargs)

    @contextlib.contextmanager
    def use_timestamps(self, timestamps, batch: int):
        """Inside this block the wrapped model's embeddings get the projected time vectors added."""
        if timestamps is None:
            if not self._warned_now:
                warnings.warn("GemmaTE got no timestamps: using the current time for every sequence "
                              "(pass timestamps=... to say when each text was written)", stacklevel=2)
                self._warned_now = True
            timestamps = [datetime.now(timezone.utc).timestamp() * 1000.0] * batch
        feats = self.encoder(timestamps)
        if feats.dim() == 1:  # a single timestamp for the whole batch
            feats = feats.expand(batch, -1)
        if feats.shape[0] != batch:
            raise DataError(f"got {feats.shape[0]} timestamps for a batch of {batch} sequences",
                            "pass one timestamp per sequence (or one per token, shape [batch, seq])")
        self._time = self.temporal_projection(feats.to(self.device, self.temporal_projection.weight.dtype))
        try:
            yield
        finally:
            self._time = None

    def _add_time(self, module, args, output):
        if (vec := self._time) is None:
            return output
        if output.shape[0] != vec.shape[0]:  # generate() expanded the batch (beams, num_return_sequences)
            vec = vec.repeat_interleave(output.shape[0] // vec.shape[0], dim=0)
        if vec.dim() == 2:
            vec = vec[:, None, :]
        elif vec.shape[1] != output.shape[1]:  # per-token: a one-token decoding step takes the last stamp
            if output.shape[1] != 1:
                raise DataError(f"got per-token timestamps for {vec.shape[1]} positions, "
                                f"but the sequence has {output.shape[1]} tokens",
                                "give one timestamp per token (or one per sequence)")
            vec = vec[:, -1:]
        return output + vec.to(output.device, output.dtype)

    def forward(self, input_ids=None, attention_mask=None, labels=None, timestamps=None, **kwargs):
        """The wrapped model's forward with time added; with labels and `fast_loss`, only the loss (the fast
        loss takes ids, mask and labels only: other arguments need the model's own forward)."""
        batch = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        num_items = kwargs.pop("num_items_in_batch", None)
        with self.use_timestamps(timestamps, batch):
            if labels is not None and self.fast_loss and input_ids is not None and not kwargs:
                mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
                loss = causal_lm_loss(self.model, input_ids, mask, labels, num_items)
                return CausalLMOutputWithPast(loss=loss)
            if num_items is not None:
                kwargs["num_items_in_batch"] = num_items
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def training_step(self, input_ids=None, attention_mask=None, timestamps=None, labels=None,
                      **kwargs) -> dict:
        """The GemmaTE guide's call for its manual loop (`model.training_step(...)["loss"].backward()`): one
        forward pass with time as {"loss", "logits"}; "logits" is None with the fast loss."""
        out = self(input_ids=input_ids, attention_mask=attention_mask, labels=labels, timestamps=timestamps,
                   **kwargs)
        return {"loss": out.loss, "logits": getattr(out, "logits", None)}

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, timestamps=None, **kwargs):
        with self.use_timestamps(timestamps, input_ids.shape[0]):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def save_pretrained(self, folder: str | Path, overwrite: bool = True) -> Path:
        """Adapter (if LoRA is attached) + the projection as safetensors + gemmate_te.json; all or nothing."""
        weight = self.temporal_projection.weight.detach().to("cpu", torch.float32).contiguous()
        meta = {"format_version": FORMAT_VERSION, "base_model": getattr(self.config, "_name_or_path", None),
                **base_fingerprint(self.model),
                "settings": {k: getattr(self.settings, k) for k in ENCODER_FIELDS},
                "lora": hasattr(self.model, "peft_config")}
        with atomic_folder(folder, overwrite=overwrite, what="GemmaTE model") as tmp:
            if meta["lora"]:
                self.model.save_pretrained(tmp)
            save_file({"temporal_projection.weight": weight}, tmp / "temporal.safetensors")
            (tmp / "gemmate_te.json").write_text(json.dumps(meta, indent=2) + "\n")
        return Path(folder)

    @classmethod
    def from_pretrained(cls, base_model, folder: str | Path) -> "GemmaTEForCausalLM":
        """Rebuild a saved GemmaTE model on `base_model` (its training base); one clear error otherwise."""
        folder = recover(folder)
        meta_file = folder / "gemmate_te.json"
        if not meta_file.exists():
            raise ModelLoadError(f"{folder.name} has no gemmate_te.json, so it is not a saved GemmaTE model",
                                 "pass the folder that GemmaTEForCausalLM.save_pretrained wrote")
        try:
            meta = json.loads(meta_file.read_text())
            settings = TemporalSettings(**{k: meta["settings"][k] for k in ENCODER_FIELDS})
        except (ValueError, KeyError, TypeError) as err:
            raise ModelLoadError(f"{folder.name}/gemmate_te.json is damaged ({type(err).__name__}: {err})",
                                 "save the model again with GemmaTEForCausalLM.save_pretrained") from None
        here = base_fingerprint(base_model)
        if meta.get("hidden_size") != here["hidden_size"]:
            raise ModelLoadError(f"the saved projection is for hidden size {meta.get('hidden_size')}, "
                                 f"this base model has {here['hidden_size']}",
                                 "load the base model the GemmaTE model was trained on")
        if differs := [f"{k}: saved {meta[k]} vs {v}" for k, v in here.items() if meta.get(k, v) != v]:
            raise ModelLoadError(f"{folder.name} was trained on {meta.get('base_model')!r}, "
                                 f"not on this base model ({', '.join(differs)})",
                                 "load the base model it was trained on")
        fix = ("train it again (07_temporal_encoding, or `gemmate train-te`) and save it, "
               "or download it again if it came from the Hub")
        if meta.get("lora"):
            check_adapter_files(folder, fix)
        if (folder / "temporal.safetensors").is_file():
            check_safetensors(folder / "temporal.safetensors", fix)
        try:
            model = PeftModel.from_pretrained(base_model, folder) if meta.get("lora") else base_model
            state = load_file(folder / "temporal.safetensors")["temporal_projection.weight"]
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise ModelLoadError(f"could not load the GemmaTE model in {folder.name}: "
                                 f"{type(err).__name__}: {str(err)[:200]}",
                                 "save it again, or check that every file is there") from None
        wrapper = cls(model, settings)
        weight = wrapper.temporal_projection.weight
        if tuple(state.shape) != tuple(weight.shape):
            raise ModelLoadError(f"temporal.safetensors holds a {tuple(state.shape)} projection, "
                                 f"the settings (temporal_dim={settings.temporal_dim}) "
                                 f"need {tuple(weight.shape)}",
                                 "save the model again; do not edit gemmate_te.json by hand")
        with torch.no_grad():
            weight.copy_(state.to(weight.device, weight.dtype))
        weight.requires_grad_(False)
        return wrapper
