"""The one way the tools write generated text into a committed page: between `<!-- NAME -->` and
`<!-- end of NAME -->` (tools/fit/notebook_fit.py's tables, tools/fit/rehearse.py's, make exercises' last run,
make colab-replica's section, the export certificate). The text outside the markers is the authors'; a run
rewrites only what lies between them, so regenerating a page from its committed data changes nothing.
tests/test_generated_blocks.py holds every block of docs/ and the README to its generator."""
from __future__ import annotations


def markers(name: str) -> tuple[str, str]:
    """The two comment lines around the block `name`."""
    return f"<!-- {name} -->", f"<!-- end of {name} -->"


def replace(text: str, name: str, body: str, append: bool = False) -> str:
    """`text` with the block `name` holding `body`; where the page has no such block: appended at its end with
    `append`, else SystemExit naming the markers to add."""
    start, end = markers(name)
    if start not in text or end not in text:
        if not append:
            raise SystemExit(f"no {start} ... {end} in the page: add the two lines where the block goes")
        return text.rstrip() + f"\n\n{start}\n{body}\n{end}\n"
    head, rest = text.split(start, 1)
    return head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1]


def block(text: str, name: str) -> str | None:
    """What lies between the markers of `name` (None where the page has no such block)."""
    start, end = markers(name)
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")
