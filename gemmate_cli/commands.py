"""`gemmate evaluate | generate | export`: a run folder's fine-tune, loaded the commands' way
(merged unless NF4), then 04's metrics, greedy completions or 05's GGUF export."""
from __future__ import annotations

from pathlib import Path

from gemmate_cli.certificate import certify, held_out_prompts, known_losses
from gemmate_cli.gguf_export import QUANT_TYPES, check_export, export_gguf
from gemmate_cli.gguf_verify import verify_gguf
from gemmate_cli.settings import CommandConfig
from gemmate_lib.adapters import load_adapter
from gemmate_lib.evaluation import evaluate_model, metrics_document
from gemmate_lib.guard_rails.files import save_json
from gemmate_lib.text_generation import STANDARD_PROMPTS, generate


def evaluate_from_config(cfg: CommandConfig) -> dict:
    """`gemmate evaluate`: 04's held-out metrics of the trained adapter, into output_dir/metrics.json."""
    from gemmate_lib.data import load_quotes
    from gemmate_lib.models import load_tokenizer

    c = cfg.course
    data = load_quotes(c.data.dataset, c.data.eval_fraction, c.data.data_seed,
                       load_tokenizer(c.model.model_name), c.train.max_length)
    print(data.report(), flush=True)  # before the model loads: bad data stops here
    model, tokenizer = load_tuned(cfg)
    result = evaluate_model(model, tokenizer, data.held_out, seed=c.train.seed,
                            train_authors=[r["author"] for r in data.train])
    doc = metrics_document({"fine-tuned": result}, c.data.dataset, "held_out",
                           unseen_author_share=data.unseen_author_share())
    save_json(Path(cfg.checkpoints.output_dir) / "metrics.json", doc)
    return doc


def generate_from_config(cfg: CommandConfig):
    """`gemmate generate`: greedy completions of `prompts` (default: the course's four standard prompts)."""
    model, tokenizer = load_tuned(cfg)
    return generate(model, tokenizer, cfg.command.prompts or STANDARD_PROMPTS,
                    max_new_tokens=cfg.course.generate.max_new_tokens)


def export_and_verify(run_dir, cfg: CommandConfig, quant_types=QUANT_TYPES, adapter: bool = False,
                      base_gguf=None) -> dict:
    """`gemmate export`: export_gguf, then verify_gguf on the standard prompts and the held-out quotes, then
    the certificate of every level; `adapter`: also the adapter alone as GGUF (adapter_gguf.py) beside the
    base's 16-bit GGUF (`base_gguf`, or converted once into gguf/), certified as the level "f16+lora"."""
    from gemmate_lib.data import load_quotes
    from gemmate_lib.hardware import pick_precision

    run_dir, c = Path(run_dir), cfg.course
    quant_types = check_export(run_dir, quant_types)
    if adapter:  # what the adapter file needs, said before the minutes of merging and converting
        from gemmate_cli.adapter_gguf import base_architecture, lora_pairs

        lora_pairs(run_dir / "adapter")
        if base_gguf is not None:
            base_architecture(base_gguf)
            check_base_outside_export(run_dir, base_gguf)
    # the merge as 05 does it: into a freshly loaded fp32 base, never a 4-bit one
    merged, tokenizer = load_merged(c.model.model_name, pick_precision("cpu", "fp32"), run_dir / "adapter")
    exported = export_gguf(run_dir, merged, tokenizer, quant_types, c.generate.max_new_tokens)
    data = load_quotes(c.data.dataset, c.data.eval_fraction, c.data.data_seed, tokenizer, c.train.max_length)
    heldout = [r["text"] + tokenizer.eos_token for r in data.held_out][:32]
    verified = verify_gguf(exported["folder"], merged, tokenizer, STANDARD_PROMPTS, heldout,
                           c.generate.max_new_tokens)
    result = {**exported, **verified}
    pair = None
    if adapter:
        from gemmate_cli.adapter_gguf import ADAPTER_FILE, base_gguf_of, write_adapter_gguf

        folder = Path(exported["folder"])
        base = base_gguf_of(c.model.model_name, folder, base_gguf)
        result["adapter_gguf"] = write_adapter_gguf(run_dir / "adapter", base, folder / ADAPTER_FILE)
        pair = (base, folder / ADAPTER_FILE)
    save_json(run_dir / "gguf" / "verification.json", result)
    # what each level cost (certificate.py), as docs/export.md shows it
    result["certificate"] = certify(exported["folder"], merged, tokenizer, held_out_prompts(data.held_out),
                                    heldout, max_new_tokens=c.generate.max_new_tokens,
                                    excused=known_losses(c.model.model_name), adapter=pair)
    save_json(run_dir / "gguf" / "certificate.json", result["certificate"])
    return result


def check_base_outside_export(run_dir, base_gguf) -> None:
    """--base_gguf must not lie in a folder the export replaces (run_dir/gguf, or the runtime's /content/gguf
    for a run on Google Drive): the export would delete it before the adapter is written against it."""
    from gemmate_lib.guard_rails.colab import RUNTIME_DISK, on_drive
    from gemmate_lib.guard_rails.errors import ParameterError
    from gemmate_lib.guard_rails.files import show_path

    where = Path(base_gguf).resolve()
    for replaced in [Path(run_dir) / "gguf"] + ([RUNTIME_DISK / "gguf"] if on_drive(run_dir) else []):
        if replaced.resolve() in where.parents:
            raise ParameterError(f"--base_gguf {show_path(where)} lies in {show_path(replaced)}, the folder "
                                 "this export replaces (it would be deleted before the adapter is written)",
                                 f"move it out first (mv {show_path(where)} ~/{where.name}) and pass the new "
                                 "path")


def load_merged(model_name: str, precision, adapter: str | Path | None, quantization: str = "none",
                attn_implementation: str = "sdpa"):
    """(model, tokenizer): `model_name` with the adapter in folder `adapter` (None: none) on it, merged
    (faster generation) unless the base is NF4: 4-bit merging re-quantizes the weights and can wash out the
    update. `gemmate evaluate / generate / export / serve` all load a fine-tune this way."""
    from gemmate_lib.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, precision, quantization, attn_implementation)
    if adapter is not None:
        model = load_adapter(model, adapter)
        if quantization == "none":
            model = model.merge_and_unload()
    return model, tokenizer


def load_tuned(cfg: CommandConfig):
    """`gemmate evaluate / generate`: `cfg`'s model with its adapter (output_dir/adapter), by load_merged."""
    adapter = cfg.command.adapter or Path(cfg.checkpoints.output_dir) / "adapter"
    model = cfg.course.model
    return load_merged(model.model_name, cfg.course.precision, None if adapter == "none" else adapter,
                       model.quantization, model.attn_implementation)
