"""Saves are all or nothing (files.atomic_folder): a kill
or a failure at any step leaves a complete folder."""

import pytest
import torch

MS_2021 = 1_633_046_400_000  # 2021-10-01T00:00:00Z


KILLER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tiny import make_tiny_gemma
import torch
from transformers import PreTrainedTokenizerFast
from gemmate_lib.config import course_config
from gemmate_lib.adapters import save_adapter
from gemmate_lib.training import attach_lora

tokenizer = PreTrainedTokenizerFast.from_pretrained({tok!r})
model = attach_lora(make_tiny_gemma(tokenizer), course_config(device="cpu", dtype="fp32"))
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.fill_(2.0)  # the new adapter
step, real_rename = {step}, Path.rename

def rename(self, target):
    global step
    step -= 1
    if step < 0:
        os.kill(os.getpid(), signal.SIGKILL)  # die just before this rename
    return real_rename(self, target)

Path.rename = rename
save_adapter(model, tokenizer, Path({folder!r}), "tiny", overwrite=True)
os.kill(os.getpid(), signal.SIGKILL) if step >= 0 and {after} else None
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", [0, 1, 2])
def test_a_save_killed_at_any_step_leaves_a_complete_adapter_old_or_new(step, tiny_tokenizer, tmp_path):
    """SIGKILL the saving process before the 1st rename (old
    -> backup), the 2nd (new -> place), or after both."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file
    from tiny import make_tiny_gemma

    from gemmate_lib.adapters import load_adapter, save_adapter
    from gemmate_lib.config import course_config
    from gemmate_lib.training import attach_lora

    tests = str(Path(__file__).resolve().parent)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    folder = save_adapter(attach_lora(make_tiny_gemma(tiny_tokenizer),
                                      course_config(device="cpu", dtype="fp32")),
                          tiny_tokenizer, tmp_path / "adapter", "tiny")  # the old adapter: lora_B all zero
    code = KILLER.format(tests=tests, tok=str(tmp_path / "tok"), step=step, folder=str(folder),
                         after=step == 2)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    model = load_adapter(make_tiny_gemma(tiny_tokenizer), folder)  # recovers, then loads
    weights = load_file(folder / "adapter_model.safetensors")
    b = torch.cat([w.flatten() for k, w in weights.items() if "lora_B" in k])
    assert bool((b == 0).all()) or bool((b == 2).all())  # wholly old, or wholly new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "tok"]
    assert any("lora" in n for n, _ in model.named_modules())


def test_a_tokenizer_failing_mid_save_is_one_save_error_and_leaves_no_partial(tiny_model, tiny_tokenizer,
                                                                              tmp_path, monkeypatch):
    from gemmate_lib.adapters import save_adapter
    from gemmate_lib.config import course_config
    from gemmate_lib.guard_rails.errors import SaveError
    from gemmate_lib.training import attach_lora

    model = attach_lora(tiny_model, course_config(device="cpu", dtype="fp32"))

    def disk_full(*args, **kwargs):
        raise Exception("No space left on device (os error 28)")  # what tokenizers (Rust) raises

    monkeypatch.setattr(type(tiny_tokenizer), "save_pretrained", disk_full)
    with pytest.raises(SaveError, match="No space left on device"):
        save_adapter(model, tiny_tokenizer, tmp_path / "adapter", "tiny")
    assert list(tmp_path.iterdir()) == []
