"""Remote storage of checkpoints (cli/storage.py): storage_backend switches it on; checkpoints sync and
resume through fsspec."""
import pytest

from gemmate_cli.parser import load_config
from gemmate_lib.guard_rails.errors import ParameterError


def test_storage_is_switched_on_by_storage_backend_and_needs_a_remote_path(tmp_path):
    with pytest.raises(ParameterError, match="storage_backend is 'none'"):
        load_config(None, {"sync_to_storage": "true", "output_dir": str(tmp_path)})
    with pytest.raises(ParameterError, match="remote_path is not set"):
        load_config(None,
                    {"storage_backend": "fsspec", "sync_to_storage": "true", "output_dir": str(tmp_path)})


@pytest.mark.parametrize("remote", ["memory://gemmate-test/run", "folder"])
def test_checkpoints_sync_to_fsspec_and_a_resume_loads_them_back(remote, tiny_folder, tmp_path):
    import shutil

    import fsspec

    from gemmate_cli.storage import remote_checkpoints
    from gemmate_cli.train import train_from_config
    from gemmate_lib.resume import complete_checkpoints

    remote = str(tmp_path / "remote") if remote == "folder" else remote
    out = tmp_path / "run"
    common = {"model_name": str(tiny_folder), "max_length": "128", "max_steps": "6", "batch_size": "2",
              "steps_freq": "2", "val_steps_freq": "2", "keep_last_n": "2", "keep_best_n": "0",
              "device": "cpu",
              "dtype": "fp32", "deterministic": "true", "storage_backend": "fsspec", "remote_path": remote,
              "output_dir": str(out), "eval_fraction": "0.05"}
    first = train_from_config(load_config(None, {**common, "sync_to_storage": "true"}))
    # uploaded, and the policy's deletion mirrored
    assert remote_checkpoints(remote) == ["checkpoint-4", "checkpoint-6"]
    fs, root = fsspec.core.url_to_fs(remote)
    assert fs.exists(f"{root}/checkpoint-6/adapter_model.safetensors")
    shutil.rmtree(out)  # the local disk is gone (a new machine, a new Colab runtime)
    resumed = train_from_config(load_config(None,
                                            {**common, "max_steps": "8", "resume_from_checkpoint": "true",
                                                   "load_from_storage": "true"}))
    assert resumed["resumed_from"] == "checkpoint-6" and resumed["steps"] == 8 and first["steps"] == 6
    assert 8 in complete_checkpoints(out)
    if remote.startswith("memory://"):
        fs.rm(root, recursive=True)
