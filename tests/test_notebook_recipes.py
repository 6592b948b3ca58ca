"""The Hugging Face calls that 01, 02 and 03 write out for the learner build the same objects as the library
that 04-07 and `gemmate train` use (models.bnb_config, generation.generate, data.load_quotes,
training.lora_config and training_args), so the page and the library cannot drift apart. Each test runs the
notebook's own cell, found by its cell id, with the parameters a run would give it, and compares the result
with the library's builder; a notebook cell that changes an argument fails here."""
import json
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def cell_source(notebook: str, cell_id: str) -> str:
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    found = [c for c in cells if c.get("id") == cell_id]
    assert len(found) == 1, f"{notebook} has no cell with id {cell_id}: keep the written-out cell's id"
    return "".join(found[0]["source"])


def run_cell(notebook: str, cell_id: str, **namespace) -> dict:
    """Execute one notebook cell in `namespace` (what the earlier cells defined) and return the namespace."""
    namespace.setdefault("display", print)  # IPython's display, outside IPython
    exec(compile(cell_source(notebook, cell_id), f"{notebook}:{cell_id}", "exec"), namespace)  # noqa: S102
    return namespace


def reload_in_05(adapter_dir, model_name: str, prompts, max_new_tokens: int, precision,
                 quantization: str = "none") -> list[str]:
    """05's fresh-process reload (its cell as written): the child's greedy generations of base + adapter."""
    from pathlib import Path

    cfg = types.SimpleNamespace(model=types.SimpleNamespace(model_name=model_name, quantization=quantization),
                                generate=types.SimpleNamespace(max_new_tokens=max_new_tokens),
                                precision=precision)
    return run_cell("05_save_and_push.ipynb", "01c05dcf", model=None, adapter_dir=Path(adapter_dir), cfg=cfg,
                    STANDARD_PROMPTS=prompts, before=types.SimpleNamespace(completion=[]))["reloaded"]


def written_out_06(cfg, model_path, other_rank: int = 32) -> tuple[dict, dict]:
    """06's written-out PEFT configs and learning rates (its cell 9a9c655e) for the model at `model_path`."""
    lesson = types.SimpleNamespace(model=types.SimpleNamespace(model_name=str(model_path)), lora=cfg.lora)
    ns = run_cell("06_compare_methods.ipynb", "9a9c655e", cfg=lesson, other_rank=other_rank)
    return ns["written_out"], ns["learning_rates"]


def build_06(cfg, model_path, keys=None, other_rank: int = 32, rates=None) -> dict:
    """methods.build_methods on 06's written-out configs and rates, as 06 calls it."""
    from gemmate_lib.methods import build_methods

    configs, learning_rates = written_out_06(cfg, model_path, other_rank)
    return build_methods(cfg, str(model_path), configs, learning_rates, keys, other_rank, rates)


PRECISIONS = {"bf16 CPU": ("cpu", torch.bfloat16), "fp32 CPU": ("cpu", torch.float32),
              "T4 fp16": ("cuda", torch.float16), "A100 bf16": ("cuda", torch.bfloat16)}


@pytest.mark.parametrize("device, dtype", PRECISIONS.values(), ids=PRECISIONS)
def test_01s_bitsandbytes_config_equals_the_librarys(device, dtype):
    from gemmate_lib import models
    from gemmate_lib.hardware import Precision

    precision = Precision(device, dtype, "test")
    ns = run_cell("01_load_4bit.ipynb", "ee3243c3", cfg=types.SimpleNamespace(precision=precision))
    assert ns["bnb_config"].to_dict() == models.bnb_config(precision).to_dict()


def test_02s_written_out_generate_equals_the_librarys(tiny_model, tiny_tokenizer):
    from gemmate_lib.text_generation import STANDARD_PROMPTS, generate

    cfg = types.SimpleNamespace(generate=types.SimpleNamespace(max_new_tokens=12))
    ns = run_cell("02_baseline_generation.ipynb", "70b1d577", model=tiny_model, tokenizer=tiny_tokenizer,
                  cfg=cfg, STANDARD_PROMPTS=STANDARD_PROMPTS)
    library = generate(tiny_model, tiny_tokenizer, [ns["prompt"]], max_new_tokens=12).completion[0]
    assert ns["text"] == library


@pytest.fixture()
def quotes_file(tmp_path):
    """A user's own file, with the curly marks that Abirate/english_quotes puts around every quote."""
    rows = [{"quote": f"\u201cQuote number {n} is here.\u201d", "author": f"Author {n}"} for n in range(12)]
    rows.append({"quote": "A quote nobody signed.", "author": ""})
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture()
def quotes_csv(tmp_path):
    """A spreadsheet's CSV: authors that pandas reads as missing ("N/A", "None") or as a number ("1984")."""
    rows = [f"Quote number {n} is here.,Author {n}" for n in range(10)]
    rows += ["Nobody knows who said this.,N/A", "Nor this one.,None", "Big Brother is watching you.,1984"]
    path = tmp_path / "mine.csv"
    path.write_text("quote,author\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("source", ["embedded", "file", "csv"])
def test_03s_data_cell_gives_the_texts_of_load_quotes(source, tiny_folder, quotes_file, quotes_csv):
    """03's written-out loading and split hold the same rows as load_quotes, which 04-06 read: with a CSV
    read by load_dataset (pandas), "N/A" and "None" authors were dropped there and kept here, and 04 evaluated
    2 or 3 quotes that 03 had trained on as held out."""
    from gemmate_lib.config import course_config
    from gemmate_lib.data import load_quotes

    dataset = {"embedded": "embedded", "file": quotes_file, "csv": quotes_csv}[source]
    cfg = course_config(model_name=str(tiny_folder), dataset=dataset)
    ns = run_cell("03_lora_sft.ipynb", "25385bc3", cfg=cfg)
    data = load_quotes(cfg.data.dataset, cfg.data.eval_fraction, cfg.data.data_seed, ns["tokenizer"],
                       cfg.train.max_length)
    assert ns["train_dataset"]["text"] == [r["text"] for r in data.train]
    assert ns["eval_dataset"]["text"] == [r["text"] for r in data.held_out]


@pytest.fixture(params=["cpu", "gpu"])
def profile(request, monkeypatch):
    """The CPU profile, and the GPU profile (paged 8-bit AdamW, checkpointing, batch 1 x 4) on this CPU."""
    if request.param == "gpu":
        monkeypatch.setenv("GEMMATE_PROFILE", "gpu")
    return request.param


def test_03s_lora_and_sft_configs_equal_the_library_builders(profile, tiny_folder, tiny_tokenizer, tmp_path,
                                                             monkeypatch):
    from tiny import make_tiny_gemma

    from gemmate_lib import models, training
    from gemmate_lib.config import course_config

    cfg = course_config(model_name=str(tiny_folder), quantization="none")  # NF4 itself: 01's test
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: make_tiny_gemma(tiny_tokenizer))
    ns = run_cell("03_lora_sft.ipynb", "a0422e79", cfg=cfg)
    library = training.lora_config(cfg)
    library.base_model_name_or_path = ns["lora_config"].base_model_name_or_path  # get_peft_model filled it in
    assert ns["lora_config"] == library
    out = tmp_path / "run"
    ns = run_cell("03_lora_sft.ipynb", "c58cf3b2", cfg=cfg, out=out)
    assert ns["sft_config"] == training.training_args(cfg, out / "trainer", has_eval=True)


@pytest.mark.parametrize("key", ["gemma", "gemma3", "gemma4"])
def test_03s_chat_cell_masks_the_turn_end_on_each_generation(key, generation_folder):
    """03's chat run on Gemma 1, 3 and 4: the cell picks the generation's training template, whose
    `{% generation %}` block holds the answer and its turn end: assistant-only loss trains the stop."""
    from datasets import Dataset
    from tiny import ROWS
    from transformers import AutoConfig, AutoTokenizer

    from gemmate_lib.generations import GENERATIONS, generation_of

    folder = generation_folder(key)
    # part 2's first cell kept the generation of the main run's model before freeing it
    generation = generation_of(AutoConfig.from_pretrained(folder))
    ns = run_cell("03_lora_sft.ipynb", "8933b0bf", AutoTokenizer=AutoTokenizer, Dataset=Dataset,
                  generation=generation, model_path=str(folder), hub_kwargs={},
                  data=types.SimpleNamespace(train=ROWS))
    end = GENERATIONS[key].turn_end
    assert ns["END"] == end
    chat = ns["chat_tokenizer"]
    enc = chat.apply_chat_template(ns["chat_train"][0]["messages"], return_dict=True,
                                   return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert chat.convert_tokens_to_ids(end) in trained  # the model learns to end its turn
    answer = chat.decode(trained)
    assert ROWS[0]["author"] in answer and ns["ASK"] not in answer  # the model's answer, not the user's turn


@pytest.mark.parametrize("fast_loss", [True, False], ids=["cpu_speedups", "plain SFTTrainer"])
def test_03s_completion_only_loss_counts_only_what_follows_the_prompt(fast_loss, tiny_folder, tiny_tokenizer,
                                                                      tmp_path, monkeypatch):
    """03 with completion_only_loss=True, through its written-out cells up to the trainer: TRL masks the
    prompt only in prompt/completion data, so on 03's text column it trained every token, silently, on both
    paths (cpu_speedups, and the plain SFTTrainer of the GPU profile). The labels now count what follows
    quote_prompt, the Author: line and EOS, and nothing of the prompt."""
    from tiny import make_tiny_gemma

    from gemmate_lib import models
    from gemmate_lib.config import course_config
    from gemmate_lib.data import load_quotes, quote_prompt

    cfg = course_config(model_name=str(tiny_folder), quantization="none", completion_only_loss=True,
                        fast_loss=fast_loss)
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: make_tiny_gemma(tiny_tokenizer))
    ns = run_cell("03_lora_sft.ipynb", "25385bc3", cfg=cfg)
    ns = run_cell("03_lora_sft.ipynb", "a0422e79", **ns)
    ns = run_cell("03_lora_sft.ipynb", "c58cf3b2", **ns, out=tmp_path / "run")
    ns = run_cell("03_lora_sft.ipynb", "2fcd6458", **ns)
    tokenizer, trained = ns["tokenizer"], ns["trainer"].train_dataset
    rows = load_quotes(cfg.data.dataset, cfg.data.eval_fraction, cfg.data.data_seed, tokenizer,
                       cfg.train.max_length).train
    assert len(trained) == len(rows)
    for row, example in zip(rows, trained):
        counted = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
        completion = row["text"][len(quote_prompt(row["quote"])):]
        assert tokenizer.decode(counted) == completion + tokenizer.eos_token


def test_05s_model_card_states_the_settings_03_trained_with(tmp_path):
    """05's card cell filled the pushed card's training settings from 05's own profile: an adapter 03 trained
    with r=16, 120 steps, learning rate 1e-4 and seed 7 was described as the profile's r=8, 40 steps, 2e-4,
    seed 42. It reads the adapter's own config and what 03 recorded in the run folder's manifest now."""
    from gemmate_lib.config import config_summary, course_config

    cfg = course_config()
    out, adapter_dir = tmp_path / "run", tmp_path / "run" / "adapter"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"r": 16, "lora_alpha": 32, "target_modules": ["v_proj", "q_proj"]}))
    trained = config_summary(cfg.replace(max_steps=120, learning_rate=1e-4, seed=7))
    (out / "manifest.json").write_text(json.dumps({"notebooks": {"03_lora_sft": {"config": trained}}}))
    ns = run_cell("05_save_and_push.ipynb", "a7f75d30", out=out, adapter_dir=adapter_dir, cfg=cfg)
    card = str(ns["card"])
    examples = trained["train"]["batch_size"] * trained["train"]["gradient_accumulation_steps"]
    for line in ("**LoRA**: r=16, alpha=32, on q_proj, v_proj", f"**steps x examples**: 120 x {examples}",
                 "**learning rate**: 0.0001", "**seed**: 7"):
        assert line in card, card
    (out / "manifest.json").unlink()  # an adapter fetched from the Hub into a new run folder: no record of 03
    ns = run_cell("05_save_and_push.ipynb", "a7f75d30", out=out, adapter_dir=adapter_dir, cfg=cfg)
    card = str(ns["card"])
    assert "**training**: not recorded" in card and "learning rate" not in card
