"""The Hugging Face token, resolved by huggingface_hub, never printed, logged or saved (taught in 00_setup).
Named `hf_token` so that it never shadows the standard library's `token` module."""
from __future__ import annotations

import os
from pathlib import Path


def get_token() -> str | None:
    """The token string, or None. Do not print what it returns."""
    from huggingface_hub import get_token as hub_get_token

    return hub_get_token()


# huggingface_hub reads Colab's secret once per process: one added or allowed later needs a restart
COLAB_SECRET_HELP = {
    "declined": "this notebook was refused access to the HF_TOKEN secret: open the key icon on the left, "
                "switch on 'Notebook access' for HF_TOKEN, then Runtime > Restart session and run again",
    "missing": "Colab has no secret named HF_TOKEN: open the key icon on the left, add HF_TOKEN with "
               "your token (https://huggingface.co/settings/tokens) and switch on 'Notebook access', then "
               "Runtime > Restart session (the secret is read once per session) and run again",
    "error": "Colab could not read the HF_TOKEN secret: restart "
             "the session (Runtime > Restart session) and run again",
    "elsewhere": "this Colab runtime runs outside the Colab web page (its VS Code extension or command "
                 "line), where notebook secrets cannot be read: run `from huggingface_hub import login; "
                 "login()` in a cell (it asks for the token and shows none of it) or `hf auth login` in a "
                 "terminal, or start the runtime with HF_TOKEN in its environment, then run again",
    "restart": "the HF_TOKEN secret was added after this session read the secrets (once, at its first Hub "
               "call): Runtime > Restart session, then run again"}


def colab_secret_problem() -> str | None:
    """Why Colab's HF_TOKEN secret cannot be read (a key of COLAB_SECRET_HELP); None outside Colab."""
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return "restart" if userdata.get("HF_TOKEN") else "missing"
    except userdata.NotebookAccessError:
        return "declined"
    except userdata.SecretNotFoundError:
        return "missing"
    except Exception as err:  # noqa: BLE001 - any other; its VS Code extension: "... from the Colab UI"
        return "elsewhere" if "Colab UI" in str(err) else "error"


def describe_token() -> str:
    """A safe one-line description for notebooks: where the token comes from, never its value."""
    from huggingface_hub import constants

    if get_token():
        where = ("the HF_TOKEN environment variable" if os.environ.get("HF_TOKEN")
                 or os.environ.get("HUGGING_FACE_HUB_TOKEN") else "the saved `hf auth login`"
                 if os.path.exists(constants.HF_TOKEN_PATH) else "Colab secrets (HF_TOKEN)")
        return f"Hugging Face token found in {where} (value hidden)"
    if problem := colab_secret_problem():
        return f"no HF_TOKEN: {COLAB_SECRET_HELP[problem]}"
    return "no HF_TOKEN: the gated google/gemma models are out of reach; the embedded default needs none"


def check_token(need_write: bool = False, api=None) -> str:
    """Ask the Hub who the token belongs to; one clear TokenError for an invalid, expired or read-only token.
    Returns a safe description. `need_write` (05's push): a write token, or fine-grained with repo.write."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from gemmate_lib.guard_rails.errors import TokenError

    if (token := get_token()) is None:
        problem = colab_secret_problem()
        raise TokenError("no Hugging Face token was found",
                         COLAB_SECRET_HELP[problem] if problem else
                         "create one at https://huggingface.co/settings/tokens and set it as HF_TOKEN")
    try:
        info = (api or HfApi()).whoami(token=token)
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            raise TokenError("the Hub refused the token (401: invalid, revoked or expired)",
                             "create a new token at https://huggingface.co/settings/tokens and update "
                             "HF_TOKEN") from None
        raise TokenError(f"the Hub could not check the token (HTTP {status})",
                         "check the network and retry") from None
    except OSError as err:  # ConnectionError too
        raise TokenError(f"the Hub cannot be reached to check the token ({type(err).__name__})",
                         "run where huggingface.co is reachable (HF_HUB_OFFLINE unset)") from None
    access = (info.get("auth") or {}).get("accessToken") or {}
    role = access.get("role", "unknown")
    if need_write and role == "read":
        raise TokenError("this token is read-only, so it cannot push",
                         "create a token with the 'Write' role (or a fine-grained one "
                         "with write access to your repositories) and set it as HF_TOKEN")
    if need_write and role == "fineGrained":
        fine = access.get("fineGrained", {})
        scopes = {p for scope in fine.get("scoped", []) for p in scope.get("permissions", [])}
        if "repo.write" not in scopes | set(fine.get("global", [])):
            raise TokenError("this fine-grained token has no write access to repositories, so it cannot push",
                             "edit the token: under Repositories, allow 'Write access to "
                             "contents/settings of all repos under your personal namespace'")
    return f"token of {info.get('name', '?')}, role {role} (value hidden)"


def subprocess_env() -> dict[str, str]:
    """os.environ plus what a child process cannot find by itself: HF_TOKEN (it cannot read Colab secrets),
    and first on PYTHONPATH the course (on Colab it is only on the kernel's sys.path, not installed)."""
    env = os.environ.copy()
    if (token := get_token()) and not env.get("HF_TOKEN"):
        env["HF_TOKEN"] = token
    course = str(Path(__file__).resolve().parents[2])  # gemmate_lib/guard_rails/ -> the course folder
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join([course] + [p for p in paths if p])
    return env
