"""gemmate_cli.llama_server: an exported GGUF behind llama.cpp's HTTP server, as Ollama serves it, answering
the raw prompt as llama.cpp in process does; one line for a wrong file or a taken port. gemmate_cli.gguf_file:
the file's header, and what its own chat template makes Ollama do with a Modelfile's TEMPLATE."""
from __future__ import annotations

import json
import socket
import struct
import urllib.request

import numpy as np
import pytest

from gemmate_cli import gguf_file, gguf_verify, llama_server
from gemmate_lib.guard_rails.errors import ModelLoadError, ParameterError, one_line

pytest.importorskip("llama_cpp")


def write_gguf(path, arch: str = "gemma3", template: str | None = None):
    """A small GGUF with one tensor and the metadata template_note reads."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    if template is not None:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch, template, says", [
    ("gemma3", None, None),
    ("gemma3", "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}", None),
    ("gemma3", "{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}", "mentions tools"),
    ("qwen3", "<think>\n{{ messages }}", "mentions <think>"),
    ("gemma4", None, "raw mode"),
])
def test_the_note_says_when_ollama_would_ignore_the_modelfiles_template(tmp_path, arch, template, says):
    note = gguf_file.template_note(write_gguf(tmp_path / "m.gguf", arch, template))
    if says is None:
        assert note is None
    else:
        assert says in note and ("OLLAMA_GO_TEMPLATE" in note or arch == "gemma4")


def test_a_wrong_file_is_one_line_before_llama_cpp_reads_it(tmp_path):
    good = write_gguf(tmp_path / "good.gguf")
    assert llama_server.gguf_fields(good)["general.architecture"] == "gemma3"
    foreign = tmp_path / "model.safetensors"
    foreign.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + b"\x00" * 64)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-1024])
    for path, says in ((tmp_path / "missing.gguf", "no GGUF file"), (foreign, "is not a GGUF file"),
                       (cut, "cut short")):
        with pytest.raises(ModelLoadError) as err:
            llama_server.gguf_fields(path)
        assert says in one_line(err.value) and "\n" not in one_line(err.value), one_line(err.value)
        with pytest.raises(ModelLoadError):
            with llama_server.serve(path):
                pass


def test_the_header_reader_reads_what_ggufs_own_reader_reads_and_where_the_tensors_end(tmp_path):
    """read_gguf_header (the export's checks read every file with it, in well under a second where gguf's
    GGUFReader takes ~19 s on a Gemma vocabulary) against GGUFReader: every scalar and string field the same,
    arrays (of strings, numbers, arrays) skipped, the tensors' end the same, three tensor types; a file cut
    inside its header is a ValueError, and one cut inside its tensors ends before its tensors do."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
    from gguf.quants import quantize

    path = tmp_path / "mixed.gguf"
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_chat_template("{{ messages }}")
    writer.add_block_count(2)
    writer.add_float32("test.scale", 0.125)
    writer.add_bool("test.flag", True)
    writer.add_int64("test.big", -(2**40))
    writer.add_token_list([f"tok{i}" for i in range(3000)])
    writer.add_token_scores([float(i) for i in range(3000)])
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_string("test.after", "read past every array")
    writer.add_tensor("a.weight", np.ones((64, 32), dtype=np.float32))
    writer.add_tensor("b.weight", np.ones((3, 5), dtype=np.float16))
    q8 = quantize(np.ones((4, 64), dtype=np.float32), GGMLQuantizationType.Q8_0)
    writer.add_tensor("c.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    fields, end = gguf_file.read_gguf_header(path)
    reader = GGUFReader(path)
    expected = {}
    for key, field in reader.fields.items():
        kind = field.types[0].name if field.types else ""
        if key.startswith("GGUF.") or kind == "ARRAY":
            continue
        part = field.parts[field.data[0]]
        expected[key] = bytes(part).decode() if kind == "STRING" else part[0].item()
    assert fields == expected and fields["test.after"] == "read past every array"
    assert fields["gemma3.block_count"] == 2 and fields["test.big"] == -(2**40)
    assert fields["test.flag"] is True
    assert end == max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors) <= path.stat().st_size
    head = tmp_path / "head.gguf"
    head.write_bytes(path.read_bytes()[:20000])  # inside the token list
    with pytest.raises(ValueError, match="cut short"):
        gguf_file.read_gguf_header(head)
    body = tmp_path / "body.gguf"
    body.write_bytes(path.read_bytes()[:-100])
    assert gguf_file.read_gguf_header(body)[1] > body.stat().st_size
    odd = tmp_path / "odd.gguf"  # one field: an array of a value type GGUF does not define
    odd.write_bytes(struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + struct.pack("<Q", 1) + b"a"
                    + struct.pack("<IIQ", 9, 99, 1) + b"\0" * 8)
    with pytest.raises(ValueError, match="unknown type 99"):
        gguf_file.read_gguf_header(odd)
    old = tmp_path / "v1.gguf"
    old.write_bytes(struct.pack("<4sIQQ", b"GGUF", 1, 0, 0))
    with pytest.raises(ValueError, match="version 1"):
        gguf_file.read_gguf_header(old)


def test_a_port_in_use_is_one_line_before_the_server_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind((llama_server.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ParameterError) as err:
            with llama_server.serve(write_gguf(tmp_path / "m.gguf"), port=port):
                pass
    assert f"port {port}" in one_line(err.value) and "another port" in err.value.fix


@pytest.mark.slow
@pytest.mark.after_nbval
def test_05s_file_served_over_http_answers_as_llama_cpp_in_process(request):
    """05's 8-bit export (make nbval) behind llama.cpp's server: the raw completion of each standard prompt,
    greedy, is the text llama.cpp writes in process, and it stops where that one does."""
    from nbval_run import nbval_run

    from gemmate_lib import export
    from gemmate_lib.text_generation import STANDARD_PROMPTS

    run = nbval_run(request, "gguf/model-q8_0.gguf", "gguf/Modelfile", after=("05_save_and_push",))
    path = run / "gguf" / "model-q8_0.gguf"
    llm = export.load_llama(path, logits_all=True)
    expected = []
    for prompt in STANDARD_PROMPTS:
        tokens, _, stopped = gguf_verify.llama_greedy(llm, prompt, 24)
        expected.append((llm.detokenize(tokens).decode(errors="replace"), "stop" if stopped else "length"))
    llm.close()
    with llama_server.serve(path) as url:
        got = [tuple(llama_server.complete(url, prompt, 24).values()) for prompt in STANDARD_PROMPTS]
        models = json.loads(urllib.request.urlopen(f"{url}/v1/models").read())
    assert got == expected
    assert any(reason == "stop" for _, reason in got)  # the fine-tune ends the quote and stops by itself
    assert models["data"][0]["id"].endswith("model-q8_0.gguf")
    with pytest.raises(OSError):  # stopped after the block
        urllib.request.urlopen(f"{url}/v1/models", timeout=2)
