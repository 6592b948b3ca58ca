"""The run folder's facts: installed versions against the Colab pins."""


def test_version_mismatches_reads_the_colab_pins(monkeypatch):
    from importlib import metadata

    from gemmate_lib import run_folder

    assert run_folder.version_mismatches() == []  # this environment is installed from the pins
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1" if name == "trl" else real(name))
    assert run_folder.version_mismatches() == [f"trl: installed 0.0.1, pinned {real('trl')}"]
