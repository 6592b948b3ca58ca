"""docs/export.md's table "What each level cost", from a run's gguf/certificate.json (`gemmate export RUN_DIR
--adapter_gguf` writes it): `python -m tools.runners.export_certificate RUN_DIR` copies the certificate to
docs/export-certificate.json and rewrites the table between the markers from it, with the run's date and
machine from its manifest. A test holds the page to the committed JSON (tests/test_certificate.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from gemmate_cli.certificate import table
from tools.markers import replace

ROOT = Path(__file__).resolve().parents[2]
DOC, RECORD = ROOT / "docs" / "export.md", ROOT / "docs" / "export-certificate.json"
BLOCK = "certificate table"  # tools/markers.py: between <!-- certificate table --> and its end


def section(cert: dict) -> str:
    """The block between the markers: where the figures come from, then the table."""
    where = cert.get("measured", {})
    return (f"The embedded fine-tune's export ({where.get('run', 'a run')}, {where.get('date', '')}, "
            f"{where.get('cpu', 'CPU unknown')}): {len(cert['prompts'])} held-out prompts, continuations "
            f"of up to {cert['n_tokens']} tokens, perplexity on {cert['held_out_texts']} held-out quotes.\n\n"
            f"{table(cert)}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tools.runners.export_certificate RUN_DIR  (a run folder whose gguf/ holds "
              "certificate.json)")
        return 2
    run = Path(argv[0])
    source = run / "gguf" / "certificate.json"
    if not source.exists():
        print(f"{source} is missing: run `gemmate export {run} --adapter_gguf` first")
        return 1
    cert = json.loads(source.read_text())
    manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}
    hw = manifest.get("hardware", {})
    bf16 = " with native bf16" if hw.get("cpu_native_bf16") else ""
    machine = f"a {hw.get('cpu_count', '?')}-core CPU{bf16}{', no GPU' if hw.get('cuda') is False else ''}"
    cert["measured"] = {"run": run.name, "date": str(manifest.get("created", ""))[:10], "cpu": machine}
    RECORD.write_text(json.dumps(cert, indent=1) + "\n")
    DOC.write_text(replace(DOC.read_text(), BLOCK, section(cert)))
    print(f"wrote {RECORD.relative_to(ROOT)} and the table in {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
