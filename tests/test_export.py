"""gemmate_lib.export (llama.cpp's tools, as 05 writes out its export) and gemmate_cli.gguf_export
(`gemmate export`'s files; the command end to end: tests/cli/test_cli_export.py): GGUF files by llama.cpp's
converter and quantizer, verified in llama.cpp. Bad inputs get one line each; a failed export leaves the
previous one in place."""
from __future__ import annotations

import collections
import json
import shutil

import pytest

from gemmate_cli import gguf_export
from gemmate_lib import export
from gemmate_lib.guard_rails.errors import ModelLoadError, ParameterError, SaveError, one_line

llama_cpp = pytest.importorskip("llama_cpp")


def _run_with_adapter(tmp_path):
    """A run folder whose adapter files are whole (what the checks before the model load look at)."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "adapter").mkdir(parents=True)
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    save_file({"lora_A.weight": torch.zeros(2, 2)}, tmp_path / "adapter" / "adapter_model.safetensors")
    return tmp_path


def test_a_run_folder_without_an_adapter_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        gguf_export.check_export(tmp_path, ["q8_0"])
    assert "no adapter in" in one_line(err.value) and "\n" not in one_line(err.value)


def test_an_unknown_quantization_type_names_the_known_ones(tmp_path):
    with pytest.raises(ParameterError) as err:
        gguf_export.check_export(_run_with_adapter(tmp_path), ["q8_0", "q3_q"])
    line = one_line(err.value)
    assert "'q3_q'" in line and "q4_k_m" in line and "\n" not in line


def test_known_types_are_llama_cpp_s_own_numbers():
    assert export.ftype("Q8_0") == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert export.ftype("q4_k_m") == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_not_enough_disk_is_refused_before_writing(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 0, 999))
    with pytest.raises(SaveError) as err:
        export.check_disk(tmp_path, 1000)
    assert "not enough disk" in one_line(err.value)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 0, 1000))
    export.check_disk(tmp_path, 1000)  # exactly enough passes
    assert list(tmp_path.iterdir()) == []


def test_a_file_llama_cpp_cannot_load_is_one_line(tmp_path):
    bad = tmp_path / "model-f16.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError) as err:
        export.load_llama(bad)
    assert "llama.cpp cannot load" in one_line(err.value)


@pytest.mark.slow  # over 3 s: make test runs it, make test-fast does not
def test_a_converter_that_does_not_know_the_architecture_is_one_line(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"}')
    with pytest.raises(ModelLoadError) as err:
        export.convert(folder, tmp_path / "out.gguf")
    line = one_line(err.value)
    assert "converter failed" in line and "\n" not in line
    assert not (tmp_path / "out.gguf").exists()


def test_a_failed_export_keeps_the_previous_one(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    run = _run_with_adapter(tmp_path)
    (run / "gguf").mkdir()
    (run / "gguf" / "model-f16.gguf").write_bytes(b"the good one")

    def broken(hf, out):
        out.write_bytes(b"half")
        raise ModelLoadError("llama.cpp's converter failed", "fix")
    monkeypatch.setattr(export, "convert", broken)
    with pytest.raises(ModelLoadError):
        gguf_export.export_gguf(run, tiny_model, tiny_tokenizer, ["q8_0"])
    assert (run / "gguf" / "model-f16.gguf").read_bytes() == b"the good one"
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "gguf"]


def test_a_run_folder_on_google_drive_gets_only_the_kept_file_and_drive_is_asked_for_its_room(
        tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    """05 in Colab wrote every GGUF file into the run folder on Drive and asked Drive for the whole export's
    room (~15 GiB for gemma-2b), which a free 15 GB Drive always refused. Now the files go to the runtime's
    disk, the one file chosen is copied to Drive, and each disk is asked only for what it gets."""
    from pathlib import Path

    from gemmate_lib.guard_rails import colab

    monkeypatch.setattr(colab, "DRIVE", tmp_path / "drive")
    monkeypatch.setattr(colab, "RUNTIME_DISK", tmp_path / "content")
    run = tmp_path / "drive" / "MyDrive" / "gemmate" / "runs" / "quotes"
    run.mkdir(parents=True)
    _run_with_adapter(run)
    n = sum(p.numel() for p in tiny_model.parameters())
    size = {"q8_0": 1.07, "q4_k_m": 0.65}
    calls = []

    def convert(hf, out):  # llama.cpp's converter and quantizer, at their boundary: files of realistic sizes
        calls.append("convert")
        out.write_bytes(b"\0" * (2 * n))
        return 1.0

    def quantize(src, dst, name):
        dst.write_bytes(b"\0" * int(size[name] * n))
        return 1.0

    usage = collections.namedtuple("usage", "total used free")
    # Drive has room for one quantized file, not for the whole export; the runtime's disk for everything
    drive = tmp_path / "drive"
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: usage(10**12, 0, 2 * n if Path(path).is_relative_to(drive) else 10**12))
    monkeypatch.setattr(export, "convert", convert)
    monkeypatch.setattr(export, "quantize", quantize)
    with pytest.raises(SaveError):  # the 16-bit file does not fit that Drive: refused before converting
        gguf_export.export_gguf(run, tiny_model, tiny_tokenizer, ["q8_0", "q4_k_m"], keep="f16")
    assert calls == [] and not (run / "gguf").exists()
    result = gguf_export.export_gguf(run, tiny_model, tiny_tokenizer, ["q8_0", "q4_k_m"], keep="q8_0")
    local = tmp_path / "content" / "gguf"
    assert result["folder"] == str(local)
    assert sorted(p.name for p in local.iterdir()) == ["Modelfile", "model-f16.gguf", "model-q4_k_m.gguf",
                                                       "model-q8_0.gguf"]
    assert sorted(p.name for p in (run / "gguf").iterdir()) == ["Modelfile", "model-q8_0.gguf"]
    assert "FROM ./model-q8_0.gguf" in (run / "gguf" / "Modelfile").read_text()
    with pytest.raises(ParameterError):
        gguf_export.export_gguf(run, tiny_model, tiny_tokenizer, ["q8_0"], keep="q4_k_m")  # not exported
    (tmp_path / "local-run").mkdir()
    local_run = _run_with_adapter(tmp_path / "local-run")  # a run folder on this disk keeps every file
    assert gguf_export.export_gguf(local_run, tiny_model, tiny_tokenizer, ["q8_0"])["folder"] == str(
        local_run / "gguf")
    assert sorted(p.name for p in (local_run / "gguf").iterdir()) == ["Modelfile", "model-f16.gguf",
                                                                     "model-q8_0.gguf"]


def test_the_modelfile_has_the_prompt_format_and_stop_token():
    text = gguf_export.modelfile("model-q4_k_m.gguf", "<eos>", 40)
    assert "FROM ./model-q4_k_m.gguf" in text and 'PARAMETER stop "<eos>"' in text
    assert "PARAMETER temperature 0" in text and "{{ .Prompt }}" in text


@pytest.mark.parametrize("key", ["gemma", "gemma3", "gemma4"])
def test_the_modelfile_of_each_generation_sends_the_prompt_as_written(tmp_path, monkeypatch, key):
    """Ollama 0.20+ renders Gemma 4 with a built-in chat renderer chosen from the GGUF's architecture and
    ignores a Modelfile's TEMPLATE (ollama/ollama issue 14560): the Modelfile of a Gemma 4 export told the
    learner to `ollama run` it, which wraps `Quote: ...` in a chat frame. A Gemma 4 export's Modelfile now
    says to send the prompt in raw mode, with the issue; Gemma 1 and 3 keep `ollama run` and the TEMPLATE
    that sends it as written."""
    from tiny import make_generation_tokenizer, make_tiny_generation

    def convert(hf, out):  # llama.cpp at its boundary: the Modelfile is what this test reads
        out.write_bytes(b"GGUF")
        return 0.0

    def quantize(src, dst, name):
        dst.write_bytes(b"GGUF")
        return 0.0

    monkeypatch.setattr(export, "convert", convert)
    monkeypatch.setattr(export, "quantize", quantize)
    monkeypatch.setattr(export, "sentencepiece_vocab", lambda hf, base: None)  # Gemma 1's, from the base
    tokenizer = make_generation_tokenizer(key)
    model = make_tiny_generation(key, tokenizer)
    run = _run_with_adapter(tmp_path / "run")
    gguf_export.export_gguf(run, model, tokenizer, ["q8_0"], max_new_tokens=40)
    text = (run / "gguf" / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in text and 'TEMPLATE """{{ .Prompt }}"""' in text
    assert 'PARAMETER stop "<eos>"' in text and "PARAMETER num_predict 40" in text
    usage = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    if key == "gemma4":
        assert "ollama run quotes" not in usage and "ollama create quotes -f Modelfile" in usage
        request = next(line for line in usage.splitlines() if "curl " in line)
        body = json.loads(request.split(" -d ", 1)[1].strip("'` "))
        assert "/api/generate" in request and body["raw"] is True
        assert body["prompt"] == "Quote: Imagination is more" and body["model"] == "quotes"
        assert "https://github.com/ollama/ollama/issues/14560" in usage
    else:
        assert 'ollama run quotes "Quote: Imagination is more"' in usage and '"raw"' not in usage


@pytest.mark.slow
@pytest.mark.after_nbval
def test_05s_export_of_the_embedded_fine_tune_keeps_llama_cpps_bounds(request):
    """05 exports the fine-tune that 03 trained on the embedded model (nbval runs both; make nbval runs this
    after them, on its run folder): llama.cpp loaded all three files, the 16-bit one gives transformers'
    greedy tokens and stops as it does, the 8-bit one keeps the format at under 5% more perplexity, and
    Q4_K_M is well under the 16-bit size. 05's self-check holds the first two; this test holds the bounds."""
    from nbval_run import nbval_run

    run = nbval_run(request, "gguf/verification.json", "gguf/Modelfile", after=("05_save_and_push",))
    result = json.loads((run / "gguf" / "verification.json").read_text())
    files = result["files"]
    assert {"model-f16.gguf", "model-q8_0.gguf", "model-q4_k_m.gguf"} <= set(files)
    assert all((run / "gguf" / name).is_file() for name in files)
    assert files["model-q4_k_m.gguf"]["size_mib"] < files["model-f16.gguf"]["size_mib"] / 1.5
    assert result["all_match_or_near_tie"], result["token_match"]
    assert all(r["stops_llama"] == r["stops_transformers"] for r in result["token_match"])
    assert files["model-q8_0.gguf"]["relative_perplexity"] < 1.05
    assert files["model-q8_0.gguf"]["keeps_f16_format"] and files["model-f16.gguf"]["stops"] > 0
    assert all(f["keeps_eos"] for f in files.values())  # Q4_K_M too, even where it lost the format


def test_gemma_1_gets_the_bases_sentencepiece_file_or_one_line_before_converting(tmp_path, monkeypatch):
    """transformers 5 saves Gemma's tokenizer without tokenizer.model, which llama.cpp's Gemma 1 converter
    reads: gemma-2b's export failed inside the converter with a FileNotFoundError."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base, hf = tmp_path / "base", tmp_path / "hf"
    base.mkdir(), hf.mkdir()
    (base / "tokenizer.model").write_bytes(b"sentencepiece")
    export.sentencepiece_vocab(hf, str(base))
    assert (hf / "tokenizer.model").read_bytes() == b"sentencepiece"
    (hf / "tokenizer.model").unlink()
    for nowhere in (str(tmp_path / "empty"), "google/gemma-2b"):  # a folder without it; the Hub, offline
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(ModelLoadError) as err:
            export.sentencepiece_vocab(hf, nowhere)
        assert "tokenizer.model" in one_line(err.value) and "\n" not in one_line(err.value)
    assert not (hf / "tokenizer.model").exists()


@pytest.mark.slow
def test_a_gemma_4_saved_by_this_transformers_converts_and_generates_in_llama_cpp_as_transformers(tmp_path):
    """A Gemma 4 (the multimodal wrapper the Hub's checkpoints load as, tiny and random, with a SentencePiece
    vocabulary of ~400 pieces, as a Gemma's: the embedded one's 262,144 took 15 of this test's 22 s) saved by
    the pinned transformers: the pinned converter read `global_head_dim`, which that config no longer
    carries, and stopped with a KeyError (without converter_shim/ it still does). llama.cpp then loads the
    16-bit file and its greedy tokens are transformers' own."""
    import torch
    from tiny import TINY_CORPUS, make_sentencepiece_tokenizer, make_tiny_generation

    prompt = "Quote: Imagination is more"
    tokenizer = make_sentencepiece_tokenizer(tmp_path / "tokenizer", TINY_CORPUS + [prompt])
    model = make_tiny_generation("gemma4", tokenizer)
    folder = tmp_path / "tiny-gemma4"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(f"{tokenizer.name_or_path}/tokenizer.model", folder / "tokenizer.model")
    export.convert(folder, tmp_path / "model-f16.gguf")

    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=4, do_sample=False)
    expected = new[0, ids.input_ids.shape[1]:].tolist()
    llm = llama_cpp.Llama(model_path=str(tmp_path / "model-f16.gguf"), n_ctx=64, verbose=False)
    tokens = llm.tokenize(prompt.encode(), add_bos=True)
    got = []
    for token in llm.generate(tokens, top_k=1, temp=0.0):
        got.append(token)
        if len(got) == 4:
            break
    llm.close()
    assert got == expected
