"""`gemmate serve`: a fine-tuned run behind transformers
serve on 127.0.0.1, real HTTP requests, bad ones refused.

The model is really trained and really served: 03's adapter from the run folder of `make nbval`'s
notebooks (40 steps on the embedded Gemma 3 270M, enough for the `Author:` line on the standard prompts),
which make nbval serves after the notebooks (marker after_nbval) instead of training a run of its own in make
unit. Every wait is bounded.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import free_port, stop

ROOT = Path(__file__).resolve().parents[2]


def test_bad_requests_are_refused_with_what_to_send(tmp_path):
    from fastapi import HTTPException

    from gemmate_cli.serve import check_request, served_model
    from gemmate_lib.guard_rails.errors import ParameterError

    check_request({"prompt": "Quote: x", "max_tokens": 40}, "prompt", ["m"])  # a good one passes
    for body, words in [({"prompt": " "}, "prompt is empty"), ({"messages": []}, "messages is empty"),
                        ({"prompt": "Q", "max_tokens": 10**8},
                         "max_tokens=100000000 must be a whole number from 1 to 512"),
                        ({"prompt": "Q", "max_tokens": 0},
                         "from 1 to 512"), ({"prompt": "Q", "max_tokens": True}, "True"),
                        ({"prompt": "Q", "max_completion_tokens": "9"}, "max_completion_tokens='9'"),
                        ({"prompt": "Q", "model": "nope"},
                         "model 'nope' is not served here; use one of: a, b")]:
        field = "messages" if "messages" in body else "prompt"
        with pytest.raises(HTTPException) as err:
            check_request(body, field, ["a", "b"] if "model" in body else ["a"])
        assert err.value.status_code == 400 and words in err.value.detail
    with pytest.raises(ParameterError, match="has neither merged/ nor adapter/"):
        served_model(tmp_path)


@pytest.mark.slow
@pytest.mark.after_nbval
def test_gemmate_serve_answers_a_quote_with_an_author_over_http(request, tmp_path):
    import shutil

    import httpx
    from nbval_run import nbval_run
    from openai import BadRequestError, OpenAI

    from gemmate_lib.models import prepare_embedded
    from gemmate_lib.text_generation import STANDARD_PROMPTS

    nbval = nbval_run(request, "adapter/adapter_model.safetensors", "adapter/gemmate.json",
                      after=("03_lora_sft",))
    run = tmp_path / "run"
    # serve merges adapter/ into merged/ in the run folder it serves: a folder here with nbval's adapter alone
    # (05's merged/ stays out: serve must merge); nbval's own folder stays as the notebooks left it
    shutil.copytree(nbval / "adapter", run / "adapter")
    base = tmp_path / "base"
    base.mkdir()
    (base / "merged").symlink_to(prepare_embedded(verbose=False))  # the untrained model, as a second "run"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gemmate_cli", "serve", str(run), str(base), "--port",
                             str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        # merging the adapter and loading: bounded to 5 minutes, one poll a second
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "gemmate serve did not answer within 5 minutes"
            time.sleep(1)
        assert (run / "merged" / "model.safetensors").exists()  # merged from adapter/, saved as safetensors
        client = OpenAI(base_url=f"{url}/v1", api_key="not-needed", timeout=120, max_retries=0)
        tuned, untrained = str(run / "merged"), str(base / "merged")
        start, tokens, texts = time.time(), 0, []
        for prompt in STANDARD_PROMPTS:
            answer = client.completions.create(model=tuned, prompt=prompt, max_tokens=40, temperature=0)
            texts.append(answer.choices[0].text)
            tokens += answer.usage.completion_tokens
        seconds = time.time() - start
        print(f"gemmate serve: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s "
              f"(greedy, 40 tokens per request, one request at a time)")
        assert sum("Author:" in t for t in texts) >= 1, texts  # the fine-tuned format, over HTTP
        plain = client.completions.create(model=untrained, prompt=STANDARD_PROMPTS[1], max_tokens=40,
                                          temperature=0)
        # the second model, picked by name, is the untrained one
        assert "Author:" not in plain.choices[0].text
        for bad, words in [(dict(model=tuned, prompt=""), "prompt is empty"),
                           (dict(model=tuned, prompt="Quote: x", max_tokens=10**8), "from 1 to 512"),
                           (dict(model="google/gemma-2b", prompt="Quote: x", max_tokens=5),
                            "is not served here")]:
            with pytest.raises(BadRequestError) as err:
                client.completions.create(**{"max_tokens": 5, **bad})
            assert words in json.dumps(err.value.body)
        chat = httpx.post(f"{url}/v1/chat/completions", json={"model": tuned, "messages": []}, timeout=30)
        assert chat.status_code == 400 and "messages is empty" in chat.text
        again = client.completions.create(model=tuned, prompt=STANDARD_PROMPTS[1], max_tokens=40,
                                          temperature=0)
        assert again.choices[0].text == texts[1]  # still running, and still the same model
    finally:
        stop(proc)


def test_a_run_folder_without_a_readable_gemmate_json_is_one_clear_error(tmp_path):
    from gemmate_cli.serve import served_model
    from gemmate_lib.guard_rails.errors import ModelLoadError, ParameterError

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ParameterError, match="no gemmate.json"):
        served_model(tmp_path)
    (adapter / "gemmate.json").write_text("[1, 2")
    with pytest.raises(ModelLoadError, match="damaged"):
        served_model(tmp_path)


def test_the_request_checks_attach_to_the_pinned_transformers_and_a_changed_one_stops_the_server():
    import types

    from transformers.cli import serve as serve_cli
    from transformers.cli.serving import server

    from gemmate_cli.serve import check_hook_point
    from gemmate_lib.guard_rails.errors import HardwareError

    # the pinned transformers: the checks attach where serve builds its app
    check_hook_point(server, serve_cli)
    renamed = types.SimpleNamespace(build_server=lambda manager, chat, completions: None)
    with pytest.raises(HardwareError, match="cannot add its request checks"):
        check_hook_point(renamed, serve_cli)
    with pytest.raises(HardwareError, match="has no transformers.cli.serving.server.build_server"):
        check_hook_point(types.SimpleNamespace(), serve_cli)


def test_a_gemma_3_is_merged_and_served_in_fp32_on_a_t4(fake_gpu, tiny_folder, monkeypatch):
    """`gemmate serve` picked the machine's precision without the generations' rule: on a T4 it merged a
    Gemma 3 adapter into an fp16 base, saved it so and served it in fp16, which Gemma 3 and 4 overflow."""
    from gemmate_cli.serve import serving_precision

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    fake_gpu((7, 5))
    assert serving_precision([tiny_folder]).name == "fp32"
    fake_gpu((8, 0))
    assert serving_precision([tiny_folder]).name == "bf16"  # an A100 keeps bf16
