"""What an exported GGUF file says about itself, read from its header without loading it (05_save_and_push,
`gemmate export`, docs/export.md): `gguf_fields` is its metadata, after one ModelLoadError line for a missing,
foreign or cut-short file; `template_note` reads the file's own chat template. Where Ollama would ignore
a Modelfile TEMPLATE (a template with tools, tool calls or thinking markers, which Ollama's server/images.go
lets override the Modelfile unless OLLAMA_GO_TEMPLATE is set; or Gemma 4, whose built-in renderer wins over
all but raw mode, ollama/ollama issue 14560), it says so and what to do instead: export.export_gguf writes
that line into the Modelfile."""
from __future__ import annotations

import math
from pathlib import Path

from gemmate_lib.housekeeping.errors import ModelLoadError
from gemmate_lib.housekeeping.files import show_path

GGUF_MAGIC = b"GGUF"
OVERRIDING = ("tools", "tool_call", "<think>")  # in a GGUF's template: Ollama uses it over a Modelfile's
# GGUF's value types (gguf.GGUFValueType): struct format of each scalar; 8 is a string, 9 an array
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
           12: "<d"}
STRING, ARRAY = 8, 9


def read_gguf_header(path) -> tuple[dict, int]:
    """({key: value} of a GGUF file's metadata, arrays left out; the byte where its last tensor's data ends),
    read from the header alone. gguf's own GGUFReader builds every field as numpy views, the 262,144
    tokenizer strings of a Gemma 3 vocabulary included: 9-16 s a file on 2 cores, where this takes under
    0.2 s. ValueError when the file is not GGUF (versions 2 and 3, as GGUFReader), holds a value type GGUF
    does not define, or is cut short inside its header."""
    import mmap
    import struct

    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt):
            nonlocal pos
            values = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return values[0] if len(values) == 1 else values

        def string():
            nonlocal pos
            size = take("<Q")
            if pos + size > len(buf):
                raise struct.error(f"a string of {size:,} bytes runs past the end")
            pos += size
            return bytes(buf[pos - size:pos]).decode(errors="replace")

        def skip(kind):
            nonlocal pos
            if kind == STRING:
                size = take("<Q")  # read before `pos +=` loads pos
                pos += size
            elif kind == ARRAY:
                item, count = take("<IQ")
                if item in SCALARS:
                    size = count * struct.calcsize(SCALARS[item])
                    pos += size
                else:
                    for _ in range(count):
                        skip(item)
            elif kind in SCALARS:
                pos += struct.calcsize(SCALARS[kind])
            else:
                raise ValueError(f"a value of unknown type {kind}")

        try:
            magic, version, n_tensors, n_fields = take("<4sIQQ")
            if magic != GGUF_MAGIC:
                raise ValueError(f"it starts with {magic!r}, not b'GGUF'")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version}, not 2 or 3")
            fields = {}
            for _ in range(n_fields):
                key, kind = string(), take("<I")
                if kind == STRING:
                    fields[key] = string()
                elif kind in SCALARS:
                    fields[key] = take(SCALARS[kind])
                elif kind == ARRAY:
                    skip(kind)
                else:
                    raise ValueError(f"field {key} has an unknown value type {kind}")
            tensors = []
            for _ in range(n_tensors):
                string()
                dims = take(f"<{take('<I')}Q")
                kind, offset = take("<IQ")
                block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
                elements = math.prod(dims if isinstance(dims, tuple) else (dims,))
                tensors.append((offset, elements // block * size))
            alignment = fields.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
            start = -(-pos // alignment) * alignment
            if pos > len(buf):
                raise struct.error("the header runs past the end")
        except struct.error as err:
            raise ValueError(f"its header is cut short ({err})") from None
    return fields, max((start + offset + size for offset, size in tensors), default=0)


def gguf_fields(path) -> dict:
    """The metadata of the GGUF at `path` ({key: value}, arrays left out). ModelLoadError when `path` is
    missing, is not a GGUF file, or was cut short (shorter than its header says), in one line, before
    llama.cpp reads it."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no GGUF file at {show_path(path)}",
                             "export it first (05 section 3, or `gemmate export RUN_DIR`)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{show_path(path)} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                             "pass the .gguf file that 05 or `gemmate export` wrote")
    try:
        fields, end = read_gguf_header(path)
    except (ValueError, OSError) as err:
        raise ModelLoadError(f"{show_path(path)} is cut short or damaged ({err})",
                             "export it again (an interrupted copy or download cuts a file short)") from None
    if end > path.stat().st_size:
        raise ModelLoadError(f"{show_path(path)} is cut short: its tensors end at byte {end:,}, the file at "
                             f"{path.stat().st_size:,}", "export it again (an interrupted copy or download)")
    return fields


def template_note(path) -> str | None:
    """Why Ollama would not use a Modelfile's TEMPLATE with this file, and what to do; None when it would."""
    fields = gguf_fields(path)
    arch = str(fields.get("general.architecture") or "")
    template = str(fields.get("tokenizer.chat_template") or "")
    if arch.startswith("gemma4"):
        return ("Ollama renders Gemma 4 with its built-in chat renderer and ignores the Modelfile's TEMPLATE "
                "(ollama/ollama issue 14560): send the prompt in raw mode (\"raw\": true on /api/generate)")
    found = [marker for marker in OVERRIDING if marker in template]
    if found:
        return (f"this file's own chat template mentions {', '.join(found)}, so Ollama uses it instead of "
                "the Modelfile's TEMPLATE: set OLLAMA_GO_TEMPLATE=1 when you run `ollama serve`, or send the "
                "prompt in raw mode (\"raw\": true)")
    return None
