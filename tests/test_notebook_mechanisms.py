"""The mechanisms that notebooks 04, 06 and 07 write out in plain code equal the library's: each test takes
the notebook's own cell (found by a line it holds), runs it in a namespace with what the notebook had defined
by then, and compares what it builds with what gemmate_lib builds. A notebook cell edited out of step with the
library fails here, so the learner's page needs no cell of its own to show the two agree.

They use the tiny random Gemma (tests/tiny.py) and the CPU profile's config; no model is converted."""
import ast
import json
from pathlib import Path

import pytest
import torch

from tests.tiny import ROWS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def cell(notebook: str, marker: str) -> str:
    """The source of the one code cell of `notebook` that contains `marker`."""
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    found = [source for source in sources if marker in source]
    assert len(found) == 1, f"{notebook}: {len(found)} code cells contain {marker!r}"
    return found[0]


def up_to(source: str, name: str) -> str:
    """The cell's statements up to and including the one that defines or assigns `name` (what follows trains
    or prints)."""
    tree = ast.parse(source)
    for i, node in enumerate(tree.body):
        if (isinstance(node, ast.FunctionDef) and node.name == name) or (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets)):
            return ast.unparse(ast.Module(body=tree.body[: i + 1], type_ignores=[]))
    raise AssertionError(f"no statement assigns {name!r}")


def run(source: str, **names) -> dict:
    """Execute notebook code in a namespace holding `names`; returns the namespace."""
    namespace = dict(names)
    exec(compile(source, "<notebook cell>", "exec"), namespace)  # noqa: S102 - our own committed notebook
    return namespace


def test_04_perplexity_in_a_few_lines_equals_held_out_loss(tiny_model, tiny_tokenizer):
    from gemmate_lib.config import course_config
    from gemmate_lib.evaluation import held_out_loss

    cfg = course_config()
    source = cell("04_evaluation", "def mean_token_loss(")
    ns = run(up_to(source, "mean_token_loss"), cfg=cfg)
    mine = ns["mean_token_loss"](tiny_model, tiny_tokenizer, ROWS)
    library = held_out_loss(tiny_model, tiny_tokenizer, ROWS, cfg.train.max_length)
    assert mine == pytest.approx(library, rel=1e-4)  # batching aside: the same tokens, the same mean


def test_07_encoder_in_plain_torch_equals_temporal_encoder():
    from gemmate_lib.config import course_config
    from gemmate_lib.temporal.model import TemporalEncoder
    from gemmate_lib.temporal.timestamps import to_milliseconds

    cfg = course_config("temporal")
    settings = cfg.temporal
    ns = run(cell("07_temporal_encoding", "def encode(timestamps_ms)"),
             temporal_scale=settings.temporal_scale, temporal_dim=settings.temporal_dim)
    dates = ["1995-01-01", "2006-05-22", "2006-05-23", "2006-05-24", "2016-05-23", "2026-05-23"]
    mine = ns["encode"](to_milliseconds(dates).tolist())
    assert torch.equal(mine, TemporalEncoder(settings)(dates))


def test_07_time_added_by_a_forward_hook_equals_gemmate_te(tiny_model, tiny_tokenizer):
    from gemmate_lib.config import course_config
    from gemmate_lib.temporal.model import GemmaTEForCausalLM
    from gemmate_lib.temporal.timestamps import to_milliseconds

    cfg = course_config("temporal")
    settings = cfg.temporal
    ns = run(cell("07_temporal_encoding", "def encode(timestamps_ms)"),
             temporal_scale=settings.temporal_scale, temporal_dim=settings.temporal_dim)
    ns = run(cell("07_temporal_encoding", "def logits_with_time("), **ns, base=tiny_model)
    enc = tiny_tokenizer(["Stay hungry, stay foolish.\nWritten:", "one two\nWritten:"], return_tensors="pt",
                         padding=True)
    when = ["2003-02-01", "2024-11-30"]
    stand_in = torch.randn(ns["projection"].weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5
    wrapped = GemmaTEForCausalLM(tiny_model, settings)
    with torch.no_grad():
        ns["projection"].weight.copy_(stand_in)
        wrapped.temporal_projection.weight.copy_(stand_in)
        mine = ns["logits_with_time"](enc, to_milliseconds(when).tolist())
        library = wrapped(**enc, timestamps=when).logits
        wrapped._hook.remove()
        plain = tiny_model(**enc).logits
    assert not torch.equal(mine, plain)  # the stand-in weights change the logits: the comparison is not empty
    assert torch.equal(mine, library)


def test_07_written_out_training_arguments_equal_the_library_builder(tmp_path):
    from gemmate_lib.config import course_config
    from gemmate_lib.temporal.data import PROMPT_END
    from gemmate_lib.training import training_args

    cfg = course_config("temporal", prompt_end=PROMPT_END)
    ns = run(up_to(cell("07_temporal_encoding", "args = TrainingArguments("), "args"), cfg=cfg, out=tmp_path)
    library = training_args(cfg, tmp_path / "temporal_trainer", has_eval=False, sft=False,
                            remove_unused_columns=False)  # what `gemmate train-te` builds
    assert ns["args"] == library
