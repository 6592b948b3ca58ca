"""The GemmaTE fine-tuning guide's own snippets, as written:
the command, the import, the manual loop, torch.save."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GUIDE_COMMAND = ["scripts/finetune.py", "--output_dir", "./fine_tuned_model", "--num_epochs", "3",
                 "--batch_size", "4",
                 "--learning_rate", "5e-5"]


def test_the_guides_import_works_from_the_repository_root():
    code = ("from scripts.finetune import TextDataset, collate_fn; "
            "print(TextDataset.__name__, collate_fn.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TextDataset", "collate_fn"]


@pytest.mark.slow
def test_the_guides_command_runs_as_written(tmp_path, tiny_folder, monkeypatch, capsys, one_thread):
    """The guide's flags exactly; only the model is swapped for
    the tiny random Gemma (450 steps would take minutes). The script's main in this process, from the folder
    the guide runs it in (the script as a file: the test below)."""
    from gemmate_cli.errors import run_cli
    from scripts import finetune

    monkeypatch.chdir(tmp_path)
    assert run_cli(finetune.main, [*GUIDE_COMMAND[1:], "--model_name", str(tiny_folder), "--save_format",
                                   "pt"]) == 0
    assert "no --data_file: training on the course's dated notes" in capsys.readouterr().out
    folder = tmp_path / "fine_tuned_model"
    assert (folder / "model" / "temporal.safetensors").exists() and (folder / "model.pt").exists()
    import json

    metrics = json.loads((folder / "train_metrics.json").read_text())
    assert metrics["steps"] == 450 and metrics["config"]["learning_rate"] == 5e-5  # 600 notes / 4 x 3 epochs

    # The guide's load snippet: a fresh model, then load_state_dict(torch.load(...)).
    from gemmate_lib.models import load_model
    from gemmate_lib.temporal.model import GemmaTEForCausalLM

    state = torch.load(folder / "model.pt", weights_only=True)
    fresh = GemmaTEForCausalLM(load_model(str(tiny_folder)))
    fresh.load_state_dict(state)
    assert fresh.temporal_projection.weight.abs().sum() > 0  # trained, not the zero initialisation


def test_a_bad_guide_option_is_one_clear_line(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / GUIDE_COMMAND[0]), "--batch_size", "0", "--data_file",
                          str(tmp_path / "missing.jsonl")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "batch_size=0 must be at least 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_guides_manual_training_loop_runs_unchanged_and_trains_what_it_should(tiny_model, tiny_tokenizer):
    """The guide's loop, as written, on the tiny Gemma (plumbing; 07 under nbval trains GemmaTE on the
    embedded model):
    it trains every weight, as the guide says, the temporal projection among them."""
    from torch.utils.data import DataLoader
    from weights import assert_trained, snapshot

    from gemmate_lib.config import course_config
    from gemmate_lib.temporal.model import GemmaTEForCausalLM

    tokenizer = tiny_tokenizer

    cfg = course_config("temporal")
    from scripts.finetune import TextDataset, collate_fn  # noqa: I001 - the guide's import

    texts = ["Stay hungry, stay foolish.\nWritten: March 2011", "Be yourself.\nWritten: June 2019"] * 2
    timestamps = ["2011-03-05", "2019-06-20"] * 2
    model = GemmaTEForCausalLM(tiny_model, cfg.temporal)
    dataset = TextDataset(texts, tokenizer, timestamps, max_length=32)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    before = snapshot(model)
    model.train()
    losses = []
    for batch in loader:  # the guide's loop, as written
        batch = {k: v.to(model.device) for k, v in batch.items()}
        outputs = model.training_step(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      timestamps=batch["timestamps"], labels=batch["labels"])
        loss = outputs["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert "temporal_projection.weight" in assert_trained(model, before)["changed"]  # time is being learned


def test_the_guides_save_format_pt_runs_in_the_gpu_profile(tmp_path, monkeypatch):
    """The guide's `--save_format pt` on a GPU: the GPU profile loads the base in 4 bits, which train-te
    refuses for model.pt (the merge would land in packed 4-bit weights), so the guide's command stopped there.
    The script loads the base in 16/32 bits for it: the configuration train-te gets says so, and passes."""
    from gemmate_cli import main as cli
    from gemmate_cli.parser import load_config
    from scripts import finetune

    monkeypatch.setenv("GEMMATE_PROFILE", "gpu")
    data = finetune.save_jsonl(tmp_path / "notes.jsonl", ["Note\nWritten: May 2008"], [1_210_377_600_000])
    forwarded = []
    monkeypatch.setattr(cli, "main", lambda argv: forwarded.extend(argv) or 0)
    argv = ["--save_format", "pt", "--data_file", str(data), "--output_dir", str(tmp_path)]
    assert finetune.main(argv) == 0
    settings = dict(zip(forwarded[1::2], forwarded[2::2]))
    cfg = load_config(None, {k.removeprefix("--"): v for k, v in settings.items()}, task="temporal")
    assert cfg.course.model.quantization == "none" and cfg.checkpoints.save_format == "pt"
