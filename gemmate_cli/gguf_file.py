"""What an exported GGUF file says about itself, read from its header without loading it (`gemmate export`,
llama_server, docs/export.md): `template_note` says when Ollama would ignore a Modelfile's TEMPLATE (the
file's own chat template, or Gemma 4's renderer; docs/export.md says why) and what to do, for the Modelfile of
gguf_export.export_gguf."""
from __future__ import annotations

import math
import mmap
import struct

OVERRIDING = ("tools", "tool_call", "<think>")  # in a GGUF's template: Ollama uses it over a Modelfile's
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
           12: "<d"}  # GGUF's value types (gguf.GGUFValueType): the struct format of each scalar
STRING, ARRAY = 8, 9  # the two value types that are not scalars


def read_gguf_header(path) -> tuple[dict, int]:
    """({key: value} of a GGUF file's metadata, arrays left out; the byte where its last tensor's data ends),
    from the header alone (gguf's GGUFReader takes seconds to build a Gemma vocabulary's 262,144 strings).
    ValueError when the file is not GGUF 2 or 3, holds a value type GGUF does not define, or is cut short."""
    fields, spans = read_gguf_layout(path)
    return fields, max((start + size for start, size in spans.values()), default=0)


def read_gguf_layout(path) -> tuple[dict, dict[str, tuple[int, int]]]:
    """read_gguf_header's metadata, and each tensor's (first byte, size in bytes) in the file, by name."""
    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt) -> tuple:
            nonlocal pos
            values = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return values

        def value(kind):  # a scalar or a string; an array is skipped (None)
            nonlocal pos
            if kind == STRING:
                size = take("<Q")[0]  # read before `pos +=` loads pos
                pos += size
                if pos > len(buf):
                    raise struct.error(f"a string of {size:,} bytes runs past the end")
                return buf[pos - size:pos]
            if kind in SCALARS:
                return take(SCALARS[kind])[0]
            if kind != ARRAY:
                raise ValueError(f"a value of unknown type {kind}")
            item, count = take("<IQ")
            if item in SCALARS:
                pos += count * struct.calcsize(SCALARS[item])
            else:
                for _ in range(count):
                    value(item)

        try:
            magic, version, n_tensors, n_fields = take("<4sIQQ")
            if magic != b"GGUF":
                raise ValueError(f"it starts with {magic!r}, not b'GGUF'")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version}, not 2 or 3")
            fields = {}
            for _ in range(n_fields):
                key, kind = value(STRING).decode(errors="replace"), take("<I")[0]
                if kind not in (*SCALARS, STRING, ARRAY):
                    raise ValueError(f"field {key} has an unknown value type {kind}")
                if (found := value(kind)) is not None:
                    fields[key] = found.decode(errors="replace") if kind == STRING else found
            tensors = {}
            for _ in range(n_tensors):
                name = value(STRING).decode(errors="replace")
                dims = take(f"<{take('<I')[0]}Q")
                kind, offset = take("<IQ")
                block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
                tensors[name] = (offset, math.prod(dims) // block * size)
            alignment = fields.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
            start = -(-pos // alignment) * alignment
            if pos > len(buf):
                raise struct.error("the header runs past the end")
        except struct.error as err:
            raise ValueError(f"its header is cut short ({err})") from None
    return fields, {name: (start + offset, size) for name, (offset, size) in tensors.items()}


def template_note(path) -> str | None:
    """Why Ollama would not use a Modelfile's TEMPLATE with this GGUF, and what to do; None when it would.
    ValueError or OSError when the file cannot be read (read_gguf_header)."""
    fields = read_gguf_header(path)[0]
    template = str(fields.get("tokenizer.chat_template") or "")
    if str(fields.get("general.architecture") or "").startswith("gemma4"):
        return ("Ollama renders Gemma 4 with its built-in chat renderer and ignores the Modelfile's TEMPLATE "
                "(ollama/ollama issue 14560): send the prompt in raw mode (\"raw\": true on /api/generate)")
    if found := [marker for marker in OVERRIDING if marker in template]:
        return (f"this file's own chat template mentions {', '.join(found)}, so Ollama uses it instead of "
                "the Modelfile's TEMPLATE: set OLLAMA_GO_TEMPLATE=1 when you run `ollama serve`, or send the "
                "prompt in raw mode (\"raw\": true)")
    return None
