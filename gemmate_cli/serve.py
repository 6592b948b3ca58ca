"""`gemmate serve RUN_DIR [RUN_DIR ...]` (05_save_and_push, docs/serving.md): fine-tuned models behind
`transformers serve`, with the request checks it lacks (empty prompts, huge `max_tokens`, unknown models)."""
from __future__ import annotations

import inspect
from pathlib import Path

from gemmate_lib.guard_rails.errors import HardwareError, ParameterError
from gemmate_lib.guard_rails.files import atomic_folder, show_path
from gemmate_lib.hardware import Precision, pick_precision

MAX_TOKENS_LIMIT = 512  # the largest `max_tokens` a request may ask for (a quote and its author need ~60)


def serving_precision(models: list[str | Path]) -> Precision:
    """This machine's precision for merging and serving `models` (Hub ids or folders), with the generations'
    rule (config.gemma3_rule): on a T4, fp32 where one of them is a Gemma 3 or 4, which overflow fp16."""
    from gemmate_lib.config import gemma3_rule

    precision = pick_precision()
    for model in models:
        precision = gemma3_rule(precision, str(model))
    return precision


def served_model(run_dir: str | Path) -> Path:
    """A run folder's merged model: `merged/`, else `adapter/` merged and saved there now."""
    run_dir = Path(run_dir)
    merged, adapter = run_dir / "merged", run_dir / "adapter"
    if (merged / "config.json").is_file():
        return merged
    if not (adapter / "adapter_config.json").is_file():
        raise ParameterError(f"{show_path(run_dir)} has neither merged/ nor adapter/",
                             "pass a run folder that 03 (or `gemmate "
                             "train`'s output_dir) wrote, e.g. runs/interactive")
    from gemmate_cli.commands import load_merged
    from gemmate_lib.adapters import read_base_info

    meta = read_base_info(adapter)
    if meta is None:
        raise ParameterError(f"{show_path(adapter)} has no gemmate.json, "
                             f"so the base model to merge into is unknown",
                             "save the adapter with save_adapter (03 does), "
                             "or merge it yourself into merged/")
    base = meta["base_model"]
    precision = serving_precision([base])
    model, tokenizer = load_merged(base, precision, adapter)
    print(f"merged {show_path(adapter)} into {base} -> {show_path(merged)}", flush=True)
    return save_merged(model, tokenizer, merged, precision.dtype)


def save_merged(merged, tokenizer, folder: str | Path, dtype) -> Path:
    """Save a merged model in `dtype` (the training dtype: bf16/fp16 halve fp32's size), all or nothing, as
    05 writes it out."""
    with atomic_folder(folder, overwrite=True, what="merged model") as tmp:
        merged.to(dtype).save_pretrained(tmp, max_shard_size="2GB")  # safetensors; RAM holds one shard
        tokenizer.save_pretrained(tmp)
    return Path(folder)


def check_request(body: dict, field: str, models: list[str], limit: int = MAX_TOKENS_LIMIT) -> None:
    """Refuse, with a 400 that says what to send instead, what transformers serve would accept and regret."""
    from fastapi import HTTPException

    value = body.get(field)
    empty = (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value)
    if value is None or empty:
        example = ('"Quote: Imagination is more"' if field == "prompt" else
                   '[{"role": "user", "content": "Finish the quote: Imagination is more"}]')
        raise HTTPException(400,
                            detail=f"{field} is empty: send what the model should continue, e.g. {example}")
    for key in ("max_tokens", "max_completion_tokens"):
        asked = body.get(key)
        whole = isinstance(asked, int) and not isinstance(asked, bool)
        if asked is not None and (not whole or not 1 <= asked <= limit):
            raise HTTPException(400, detail=f"{key}={asked!r} must be a whole number from 1 to {limit} "
                                           "on this server (gemmate serve --max_tokens_limit raises "
                                           "the limit)")
    if len(models) > 1 and body.get("model") not in models:
        raise HTTPException(400, detail=f"model {body.get('model')!r} is not served "
                                        f"here; use one of: {', '.join(models)}")


HOOK = ("model_manager", "chat_handler", "completion_handler")  # build_server's first parameters, in order


def check_hook_point(server, serve_cli) -> None:
    """Refuse to start unless the request checks can attach where transformers serve builds its app (internal
    API: after an upgrade they could silently not run)."""
    problem = None
    build = getattr(server, "build_server", None)
    if build is None:
        problem = "has no transformers.cli.serving.server.build_server"
    elif (first := tuple(inspect.signature(build).parameters)[:3]) != HOOK:
        problem = f"build_server's parameters are {first}, not {HOOK}"
    elif "from .serving.server import build_server" not in inspect.getsource(serve_cli.Serve):
        problem = "Serve no longer imports build_server when it starts"
    else:
        from transformers.cli.serving import chat_completion, completion

        if not (hasattr(completion.CompletionHandler, "handle_request")
                and hasattr(chat_completion.ChatCompletionHandler, "handle_request")):
            problem = "its completion or chat handler has no handle_request"
    if problem:
        import transformers

        raise HardwareError(f"transformers {transformers.__version__} {problem}, "
                            "so gemmate serve cannot add its request checks",
                            "install the pinned transformers (make install), or run "
                            "`transformers serve` yourself, without the checks")


def run_server(folders: list[Path], host: str, port: int, limit: int) -> None:
    """Start transformers' server with the request checks; blocks until stopped (Ctrl-C)."""
    from transformers.cli import serve as serve_cli
    from transformers.cli.serving import server

    check_hook_point(server, serve_cli)
    models = [str(f) for f in folders]
    original = server.build_server

    def build_with_checks(model_manager, chat_handler, completion_handler, *args, **kwargs):
        for handler, field in ((completion_handler, "prompt"), (chat_handler, "messages")):
            def checked(body, request_id, _handle=handler.handle_request, _field=field):
                check_request(body, _field, models, limit)
                return _handle(body, request_id)
            handler.handle_request = checked
        return original(model_manager, chat_handler, completion_handler, *args, **kwargs)

    server.build_server = build_with_checks  # serve.py imports it from this module when the server starts
    precision = serving_precision(folders)
    print(f"serving {', '.join(models)} on http://{host}:{port}/v1 (transformers serve, {precision.name}); "
          f"try:\n  curl http://{host}:{port}/v1/completions -H 'Content-Type: application/json' -d "
          f"'{{\"model\": \"{models[0]}\", \"prompt\": \"Quote: Imagination is more\", \"max_tokens\": 40}}'",
          flush=True)
    serve_cli.Serve(force_model=models[0] if len(models) == 1 else None, host=host, port=port,
                    dtype=str(precision.dtype).removeprefix("torch."), device=precision.device,
                    log_level="warning")
