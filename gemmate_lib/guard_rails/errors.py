"""Errors that name the problem and the fix (00_setup shows one), and the one wrapper that turns any error
into one line, which every command line (`gemmate`, tools.runners.course) runs in."""
from __future__ import annotations

import contextlib
import re
import sys


class GemmateError(Exception):
    """Base error of the course: `problem` says what is wrong, `fix` what to do."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}\n  Fix: {fix}")


class ParameterError(GemmateError, TypeError):
    """A notebook or config parameter has the wrong type or value."""


class ModelLoadError(GemmateError, OSError):
    """A model could not be loaded: gated, unknown id, offline, missing package."""


class DataError(GemmateError, ValueError):
    """A dataset could not be loaded or has no usable rows."""


class HardwareError(GemmateError, RuntimeError):
    """The requested hardware (a GPU, bf16) is not there."""


class SaveError(GemmateError, OSError):
    """An adapter, model or file could not be saved or pushed."""


class TokenError(GemmateError, PermissionError):
    """The Hugging Face token is missing, refused, expired, or lacks a needed permission."""


class OutOfMemory(GemmateError, MemoryError):
    """The GPU's memory or the host's RAM ran out while loading a model or running a step."""


LAST_FIT: dict = {}  # the last fit line gemmate_lib.fit.notebook_fit computed here, which OutOfMemory quotes


def _causes(err: BaseException):
    """The error and the chain of errors it was raised from (transformers wraps Hub errors in OSError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def out_of_memory_error(what: str, err: BaseException) -> OutOfMemory | None:
    """OutOfMemory (which memory, the fit line printed, the fixes) if `err` or a cause ran out; else None."""
    torch = sys.modules.get("torch")  # an error raised by torch means torch is imported already
    kinds = (MemoryError,) + ((torch.OutOfMemoryError,) if torch is not None else ())
    found = next((e for e in _causes(err) if isinstance(e, kinds) and not isinstance(e, GemmateError)), None)
    if found is None:
        return None
    memory = "the host's RAM" if isinstance(found, MemoryError) else "the GPU's memory"
    detail = " ".join(str(found).split())[:160]
    said = f"; the course estimated: {LAST_FIT['line']}" if LAST_FIT.get("line") else ""
    return OutOfMemory(f"{memory} ran out while {what}" + (f" ({detail})" if detail else "") + said,
                       "free the copy an earlier cell holds (`del model`, then gc.collect() and "
                       "torch.cuda.empty_cache()) and rerun; or take the 4-bit path (quantization=\"nf4\"), "
                       "a smaller model (google/gemma-3-1b-pt), a smaller batch_size or max_length, or a "
                       "bigger runtime (an L4 or A100); docs/troubleshooting.md, 'Out of memory'")


def hub_load_error(name: str, err: Exception, kind: str = "model") -> GemmateError:
    """One clear error for a failed Hub load of `name`, chosen by huggingface_hub's exception types."""
    from huggingface_hub import errors as hub

    if memory := out_of_memory_error(f"loading {kind} {name!r}", err):  # not the id's fault
        return memory
    cls, chain = (ModelLoadError if kind == "model" else DataError), list(_causes(err))
    status = next((getattr(e.response, "status_code", None) for e in chain
                   if isinstance(e, hub.HfHubHTTPError) and getattr(e, "response", None) is not None), None)
    if any(isinstance(e, hub.GatedRepoError) for e in chain) or status == 403:
        return cls(f"{kind} {name!r} is gated and this token has no access to it",
                   f"open https://huggingface.co/{name}, accept the licence with the account of "
                   "your HF_TOKEN (a fine-grained token also needs 'read access to public gated repos'), "
                   "then rerun")
    if any(isinstance(e, hub.RepositoryNotFoundError) for e in chain) or status == 404:
        return cls(f"{kind} {name!r} was not found on the Hub (unknown id, or private without access)",
                   f"check the spelling of {name!r}; use 'embedded' for the offline default")
    if status == 401:
        return cls(f"the Hub refused the token for {kind} {name!r} (401: invalid or expired)",
                   "create a new token at https://huggingface.co/settings/tokens "
                   "and update the HF_TOKEN secret")
    offline = (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled, ConnectionError, TimeoutError)
    if any(isinstance(e, offline) for e in chain):
        return cls(f"{kind} {name!r} is not cached here and the Hub "
                   f"cannot be reached (offline or HF_HUB_OFFLINE=1)",
                   "use 'embedded' (works offline), or run where the Hub is reachable")
    return cls(f"could not load {kind} {name!r}: {type(err).__name__}: {str(err)[:300]}",
               "check the id or path; see the message above")


@contextlib.contextmanager
def hub_errors(name: str, kind: str = "model"):
    """A Hub failure in the block as one clear error with the fix (01 and 03 write the load call out)."""
    try:
        yield
    except GemmateError:
        raise
    except Exception as err:  # noqa: BLE001 - mapped to a clear message
        raise hub_load_error(name, err, kind) from err


def one_line(err: BaseException) -> str:
    """An error as one line, safe to print and log (anything shaped like a token becomes <token>)."""
    text = (f"{err.problem}; fix: {err.fix}" if isinstance(err, GemmateError)
            else f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
    return re.sub(r"hf_[A-Za-z0-9]{20,}", "<token>", text)
