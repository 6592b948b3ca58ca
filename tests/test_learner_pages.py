"""What a learner reads agrees with itself: 04's forest plot colours each paired difference by the rule
its printed verdict uses, and the learner's pages (notebooks, docs/, README) name none of the course's own
tooling, which CONTRIBUTING.md describes instead."""
import json
import re
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIFFS = {  # fine-tuned minus baseline: "ci95" the plain interval, "ci" Bonferroni's wider one
    "rouge_l": {"difference": 0.05, "ci95": [0.01, 0.09], "ci": [-0.01, 0.11]},  # plain excludes 0 only
    "format_compliance": {"difference": 0.5, "ci95": [0.3, 0.7], "ci": [0.2, 0.8]},  # both exclude 0
    "bleu": {"difference": 0.0, "ci95": [-0.1, 0.1], "ci": [-0.2, 0.2]},  # neither
    "perplexity": {"difference": -3.0, "ci95": [-5.0, -1.0], "ci": [-6.0, -0.5]},
}


def _verdict_lines() -> dict:
    """04's printed reading of DIFFS, from its own cell."""
    import contextlib
    import io

    cells = json.loads((ROOT / "notebooks" / "04_evaluation.ipynb").read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells]
    source = next(s for s in sources if "survive the Bonferroni correction" in s)
    metric = {"interval": "bootstrap", "value": 1.0, "ci95": [0.5, 1.5], "n": 10}
    model = types.SimpleNamespace(metrics={**{m: metric for m in DIFFS}, "author_accuracy_seen": metric})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(source, {"diffs": DIFFS, "baseline": model, "finetuned": model, "unseen_share": 0.5,
                      "rows": [0]})
    return {line.split(":")[0]: line for line in printed.getvalue().splitlines() if ":" in line}


def test_04s_plot_colours_each_difference_as_its_printed_verdict_reads_it(monkeypatch):
    from gemmate_lib import plots

    figures = []
    monkeypatch.setattr(plots, "_finish", lambda fig, path: figures.append(fig))
    plots.paired_differences(DIFFS, "fine-tuned minus baseline")
    colour = {}
    for ax in figures[0].axes:
        names = [label.get_text().replace(" ", "_") for label in ax.get_yticklabels()]
        for line in (line for line in ax.lines if line.get_marker() == "o"):  # a metric's point, at its row
            colour[names[int(line.get_ydata()[0])]] = line.get_color()
    verdict = _verdict_lines()
    assert "suggestive, not shown" in verdict["rouge_l"]
    assert "the data supports" in verdict["format_compliance"]
    assert "the data supports" in verdict["perplexity"] and "no difference" in verdict["bleu"]
    # one colour per reading, and the same metrics share it in the plot and in the printed verdict
    reading = {m: ("supports" if "supports" in v else "suggestive" if "suggestive" in v else "none")
               for m, v in verdict.items() if m in DIFFS}
    for a in DIFFS:
        for b in DIFFS:
            assert (colour[a] == colour[b]) == (reading[a] == reading[b]), (a, b)


# words that name the course's own tooling (make targets, test runners and markers, test paths, maintainer
# folders, linter pragmas); a learner's page says what the learner does instead
TOOLING = re.compile(r"make (install|embedded|course|lint|test|unit|nbval|smoke|sync|gpu-|drift|"
                     r"colab-replica|notebooks)|pytest|nbval|papermill|tests/|smoke run|benchmarks/|noqa|"
                     r"runs notebooks in batch|scheduled or batch run|A test checks|the committed run")


def _learner_pages():
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            yield notebook.name, "".join(cell["source"])
    for page in ("docs/colab.md", "docs/troubleshooting.md", "docs/gemma-generations.md"):
        yield page, (ROOT / page).read_text()
    # the README's front door keeps its two commands (in a learner's words): the rest names no tooling
    readme = (ROOT / "README.md").read_text()
    yield "README.md", re.sub(r"## The two commands\n+```bash\n.*?```", "", readme, flags=re.S)


def test_the_learners_pages_name_no_tooling():
    found = [f"{page}: ...{text[max(m.start() - 40, 0):m.end() + 20]}..." for page, text in _learner_pages()
             for m in TOOLING.finditer(text)]
    assert found == [], "\n".join(found)
