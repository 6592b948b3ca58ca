import subprocess
import sys
import time

import pytest
import torch

from gemmate_lib.guard_rails.errors import ModelLoadError
from gemmate_lib.models import (
    count_parameters,
    footprint_mib,
    load_model,
    load_tokenizer,
    prepare_embedded,
    resolve_model,
)


@pytest.fixture()
def no_token(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))


def _hub_failure(cls, status):
    """What transformers raises after a failed Hub request:
    an OSError raised from huggingface_hub's typed error."""
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    try:
        try:
            raise cls(f"{status} Client Error", response=response)
        except Exception as inner:
            raise OSError("You are trying to access a gated repo or an unknown one.") from inner
    except OSError as outer:
        return outer


@pytest.mark.parametrize("cls_name, status, message", [
    ("GatedRepoError", 403, "is gated and this token has no access"),
    ("RepositoryNotFoundError", 401, "was not found on the Hub"),
    ("HfHubHTTPError", 401, "refused the token"),
    ("HfHubHTTPError", 403, "is gated"),
])
def test_hub_failures_are_recognised_by_type_not_by_text(cls_name, status, message):
    import huggingface_hub.errors as hub_errors

    from gemmate_lib.guard_rails.errors import hub_load_error

    err = hub_load_error("google/gemma-2b", _hub_failure(getattr(hub_errors, cls_name), status))
    assert isinstance(err, ModelLoadError) and message in err.problem and err.fix


def test_offline_is_recognised_by_type():
    from huggingface_hub.errors import LocalEntryNotFoundError

    from gemmate_lib.guard_rails.errors import hub_load_error

    try:
        raise OSError("We couldn't connect") from LocalEntryNotFoundError("no cache, offline")
    except OSError as err:
        assert "cannot be reached" in hub_load_error("someone/model", err).problem
    # words alone no longer decide
    plain = hub_load_error("someone/model", ValueError("403 resolve gated offline"))
    assert plain.problem.startswith("could not load model")


def test_gated_model_without_token_fails_at_once_with_the_fix(no_token):
    start = time.time()
    with pytest.raises(ModelLoadError) as err:
        load_model("google/gemma-2b")
    assert time.time() - start < 5  # no Hub round trip
    text = str(err.value)
    assert "gated" in text and "HF_TOKEN" in text and "embedded" in text


def test_unknown_model_id_offline_is_explained(no_token):
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer("nobody-here/no-such-model")
    text = str(err.value)
    assert "nobody-here/no-such-model" in text and "embedded" in text


@pytest.mark.parametrize("bad", ["./no/such/folder", "gemma 2b", ""])
def test_wrong_path_or_malformed_id(bad):
    with pytest.raises(ModelLoadError, match="embedded"):
        resolve_model(bad)


def test_embedded_tokenizer_and_model(tokenizer, base_model):
    ids = tokenizer("Quote: Imagination is more")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 6
    assert base_model.config.model_type == "gemma3_text" and base_model.config.vocab_size == 262144
    _, total = count_parameters(base_model)
    assert 260e6 < total < 275e6  # Gemma 3 270M


@pytest.mark.slow  # make test-fast does not prepare the embedded model
def test_the_embedded_tokenizer_config_holds_the_added_tokens_that_transformers_leaves_out():
    """prepare_embedded writes them into tokenizer_config.json, as the Hub's Gemma folders hold them:
    transformers 5's save_pretrained leaves them out, and each load then parsed the 33 MB tokenizer.json once
    more to find them (3.1 s a load against 2.0 s on the 2-core EPYC). The entries are tokenizer.json's."""
    import json

    folder = prepare_embedded(verbose=False)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    assert len(added) > 6000 and config["added_tokens_decoder"] == {str(t.pop("id")): t for t in added}


def test_nf4_is_smaller_and_close_to_full_precision(tokenizer, base_model, fp32):
    nf4 = load_model("embedded", fp32, quantization="nf4")
    assert type(nf4.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    # the seven projections of every block go from 32 to ~4.5 bits; embeddings and norms stay as they were
    projections = sum(p.numel() * p.element_size() for n, p in base_model.named_parameters()
                      if n.endswith("proj.weight")) / 2**20
    saved = footprint_mib(base_model) - footprint_mib(nf4)
    assert 0.8 * projections < saved < projections
    ids = tokenizer("Quote: Imagination is more", return_tensors="pt")
    with torch.no_grad():
        top_full = base_model(**ids).logits[0, -1].topk(5).indices
        top_nf4 = nf4(**ids).logits[0, -1].topk(5).indices
    assert len(set(top_full.tolist()) & set(top_nf4.tolist())) >= 3


def test_the_written_out_from_pretrained_of_01_gets_the_same_clear_error():
    import huggingface_hub.errors as hub_errors_module

    from gemmate_lib.guard_rails.errors import hub_errors

    with pytest.raises(ModelLoadError, match="is gated and this token has no access"):
        with hub_errors("google/gemma-2b"):
            raise _hub_failure(hub_errors_module.GatedRepoError, 403)
    with hub_errors("google/gemma-2b"):
        pass  # nothing raised, nothing changed


def test_an_nf4_model_on_a_cpu_computes_the_same_after_a_save(tiny_folder, fp32, monkeypatch):
    """bitsandbytes repacks NF4 weights on a CPU with AVX512_BF16 and re-quantizes their scales on every
    state_dict(): the model in memory drifted from the one saved, and 07's reload check failed there."""
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)  # the CPU's flags
    model = load_model(str(tiny_folder), fp32, "nf4").eval()
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        model.state_dict()  # what every save_pretrained does
        assert torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.slow  # over 3 s: make test runs it, make test-fast does not
def test_quiet_hides_the_bar_of_each_model_load_but_no_other_bar(tiny_folder):
    """The committed notebooks held a "Loading weights" bar for each of the course's model loads. One child
    process loads the model before quiet() (its bar shows) and after it (no bar; a training bar does)."""
    code = ("import sys, gemmate_lib\n"
            "from transformers import AutoModelForCausalLM\n"
            "from transformers.utils.logging import tqdm\n"
            f"AutoModelForCausalLM.from_pretrained({str(tiny_folder)!r})\n"
            "print('--- quiet', file=sys.stderr, flush=True)\n"
            "gemmate_lib.quiet()\n"
            f"AutoModelForCausalLM.from_pretrained({str(tiny_folder)!r})\n"
            "for _ in tqdm(range(3), desc='Training steps'): pass\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loud, quiet = out.stderr.split("--- quiet")
    assert "Loading weights" in loud and "Loading weights" not in quiet
    assert "Training steps" in quiet


def _tiny_generation(key):
    """(tokenizer, model): a fresh tiny random model of Gemma generation `key`."""
    from tiny import make_generation_tokenizer, make_tiny_generation

    tokenizer = make_generation_tokenizer(key)
    return tokenizer, make_tiny_generation(key, tokenizer)


def _bf16_exact_table(model):
    """The tiny Gemma 4's per-layer table as a Hub checkpoint holds it: fp32 values that came from bf16."""
    table = next(m for n, m in model.named_modules() if n.endswith("embed_tokens_per_layer"))
    table.weight.data = table.weight.data.to(torch.bfloat16).float()
    return table


def test_gemma4s_per_layer_table_on_the_cpu_computes_the_same_and_trains():
    """lookup_tables_to_cpu: the same logits to the bit, the table a bf16 buffer under its own name that
    `.to()`
    and k-bit preparation leave alone, and a LoRA step that still trains."""
    from peft import LoraConfig, get_peft_model

    from gemmate_lib.generations import lora_targets
    from gemmate_lib.models import host_bytes, lookup_tables_to_cpu

    tokenizer, model = _tiny_generation("gemma4")
    table = _bf16_exact_table(model)
    ids = tokenizer(["Quote: time flies", "Quote: a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**ids).logits
    keys = set(model.state_dict())
    moved = lookup_tables_to_cpu(model)
    assert moved == table.weight.numel() * 2 == host_bytes(model)  # bf16: 2 bytes a value
    assert table.weight.dtype == torch.bfloat16 and "weight" not in dict(table.named_parameters())
    assert set(model.state_dict()) == keys  # saves and merges see the same names
    model.to(torch.float32)
    assert table.weight.dtype == torch.bfloat16  # .to() leaves it where it is
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, before)
    assert lookup_tables_to_cpu(model) == 0  # once is enough
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=lora_targets(model), task_type="CAUSAL_LM"))
    lora.train()
    lora(**ids, labels=ids["input_ids"]).loss.backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)


def test_a_table_that_is_not_bf16_stays_in_its_dtype_on_the_cpu():
    from gemmate_lib.models import lookup_tables_to_cpu

    tokenizer, model = _tiny_generation("gemma4")  # random fp32 values: bf16 would round them
    ids = tokenizer(["Quote: time flies"], return_tensors="pt")
    with torch.no_grad():
        before = model(**ids).logits
    assert lookup_tables_to_cpu(model) > 0
    table = next(m for n, m in model.named_modules() if n.endswith("embed_tokens_per_layer"))
    assert table.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, before)


def test_other_generations_have_no_table_to_move():
    from gemmate_lib.models import lookup_tables_to_cpu

    for key in ("gemma", "gemma3"):
        assert lookup_tables_to_cpu(_tiny_generation(key)[1]) == 0


def test_whole_model_loads_pass_device_map_as_nf4_loads_do(generation_folder, monkeypatch):
    """01's, 05's and 06's 16/32-bit loads on a GPU go tensor by tensor to the device (device_map), not
    through
    host RAM as a whole model first: the call transformers gets, with CUDA faked at the boundary."""
    import transformers

    from gemmate_lib.hardware import Precision

    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        calls.append(kwargs)
        return real(path, **{**kwargs, "device_map": {"": "cpu"}})  # no CUDA here: load on the CPU instead

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setenv("LOCAL_RANK", "0")
    precision = Precision(device="cuda", dtype=torch.float32, reason="a faked GPU")
    model = load_model(str(generation_folder("gemma")), precision, quantization="none")
    assert calls[0]["device_map"] == {"": 0} and "quantization_config" not in calls[0]
    assert next(model.parameters()).device.type == "cpu"
