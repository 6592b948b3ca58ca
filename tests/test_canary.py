"""Canary: with HF_TOKEN set to a fake value, nothing the course writes may contain it."""
from pathlib import Path

import papermill as pm

from gemmate_lib import course_config, token
from gemmate_lib.hub import save_adapter
from gemmate_lib.training import attach_lora

ROOT = Path(__file__).resolve().parents[1]
CANARY = "hf_" + "CANARYcanary" * 3 + "0000"  # built at run time: not a token-shaped literal in the repo


def test_no_produced_file_contains_the_token(monkeypatch, tmp_path, fresh_model, tokenizer, capsys):
    monkeypatch.setenv("HF_TOKEN", CANARY)
    print(token.describe_token(), token.token_source())
    model = attach_lora(fresh_model, course_config(device="cpu").lora)
    save_adapter(model, tokenizer, tmp_path / "adapter", "embedded")
    # 06 with a token and a repo id tries to push; offline that fails with one clear line
    pm.execute_notebook(str(ROOT / "notebooks" / "06_save_and_push.ipynb"), str(tmp_path / "06_executed.ipynb"),
                        parameters={"run_dir": str(tmp_path), "repo_id": "someone/canary-test", "save_merged": False},
                        cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False,
                        )
    executed = (tmp_path / "06_executed.ipynb").read_text()
    assert "push failed" in executed  # it did try, with the token present
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(p.name == "manifest.json" for p in files)
    leaks = [str(p.relative_to(tmp_path)) for p in files if CANARY.encode() in p.read_bytes()]
    assert leaks == []
    assert CANARY not in capsys.readouterr().out
