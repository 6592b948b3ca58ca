from gemmate_lib import token

FAKE = "hf_" + "FAKEfake" * 4 + "1234"  # built at run time: not a token-shaped literal in the repo


def test_token_from_environment_is_returned_but_never_described(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE)
    assert token.get_hf_token() == FAKE
    assert token.token_source() == "env"
    text = token.describe_token()
    print(text)
    assert FAKE not in text and FAKE not in capsys.readouterr().out


def test_legacy_variable_is_a_fallback(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", FAKE)
    assert token.get_hf_token() == FAKE


def test_no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert token.get_hf_token() is None and token.token_source() is None
    assert "no HF_TOKEN" in token.describe_token()
