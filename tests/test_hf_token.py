"""The token comes from huggingface_hub.get_token():
environment, saved login or Colab secrets; never shown."""
import sys
import types

import pytest

from gemmate_lib.guard_rails import hf_token

FAKE = "hf_" + "FAKEfake" * 4 + "1234"  # built at run time: not a token-shaped literal in the repo


@pytest.fixture()
def clean(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    return tmp_path / "token"


def test_token_from_environment_is_returned_but_never_described(clean, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE)
    text = hf_token.describe_token()
    assert hf_token.get_token() == FAKE and "the HF_TOKEN environment variable" in text
    print(text)
    assert FAKE not in text and FAKE not in capsys.readouterr().out


def test_a_saved_login_is_found(clean):
    clean.write_text(FAKE)
    assert hf_token.get_token() == FAKE and "found in the saved `hf auth login`" in hf_token.describe_token()


def test_a_subprocess_gets_the_token_through_its_environment(clean):
    clean.write_text(FAKE)  # e.g. a Colab secret or a saved login: not in os.environ
    assert hf_token.subprocess_env()["HF_TOKEN"] == FAKE


def test_no_token(clean):
    assert hf_token.get_token() is None and "no HF_TOKEN" in hf_token.describe_token()
    assert "HF_TOKEN" not in hf_token.subprocess_env()


def test_the_module_does_not_shadow_the_standard_library_token_module():
    import gemmate_lib

    folder = gemmate_lib.__path__[0]
    sys.path.insert(0, folder)
    try:
        sys.modules.pop("token", None)
        import token

        assert hasattr(token, "NAME") and isinstance(token, types.ModuleType)
    finally:
        sys.path.remove(folder)
