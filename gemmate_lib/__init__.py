"""gemmate_lib: what the course's notebooks import, one concern per module, listed here in the order the
lessons bring them in (each module's docstring names the notebook that teaches it). Importing it changes
nothing global; notebooks call `quiet()`.

  00_setup                 hardware (device, precision, memory), config (the profile and the one validator),
                           models (loading), fit (will it fit: each notebook's line, 00 all of them)
  01_load_4bit             data (the quotes), evaluation (held-out loss)
  02_baseline_generation   text_generation
  03_lora_sft              generations (Gemma 1, 3, 4), training (the one training path), fast_loss, resume
                           (the same run), preflight (and the gradient tripwire), methods, adapters, plots
  04_evaluation            evaluation (metrics), stats, plots
  05_save_and_push         adapters, export (llama.cpp's converter, quantizer and loader; converter_shim/)
  06_compare_methods       methods, stats
  07_temporal_encoding     temporal/ (timestamps, model, data, tasks, training)
  03, 04, 07               reference (is my run normal? bands measured from real runs)
  every notebook           exercises/ (exercise_check and its fit line; the checks in checks_00_03 and
                           checks_04_07; judging: the registry and how a check judges), and guard_rails/,
                           the learner's guard rails under every lesson module (errors, files, colab,
                           hf_token, run_folder, selfcheck)

Every training run goes through training.train (training.train_lora, methods.train_arm and
temporal.training.train_temporal wrap it); fast_loss is its loss. The command line (gemmate_cli, the
`gemmate` command) and the maintainer tooling (tools/) import this package; it imports neither."""
from gemmate_lib.guard_rails.errors import GemmateError, out_of_memory_error

__version__ = "0.1.0"


def quiet() -> None:
    """Silence what is noise for a learner (notebooks and commands call it once): tqdm's ipywidgets notice,
    deprecation warnings from peft's calls into transformers, bitsandbytes' optional CPU kernel, the bars of
    model loads and instant `map`s, and peft ignoring position ids under prompt tuning (06, rightly). In a
    notebook, a course error then shows as its one line (problem and fix); the cell still fails, and `%tb`
    shows the full traceback."""
    import logging
    import os
    import sys
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from transformers.utils.logging import set_tqdm_hook

    set_tqdm_hook(_no_loading_bar)  # the bars of model loads and saves only: download and training bars stay
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported ...
    if "datasets" in sys.modules:  # ... or already imported
        sys.modules["datasets"].disable_progress_bars()
    try:
        shell = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - defined inside IPython only
    except NameError:
        return

    def show(shell, etype, value, tb, tb_offset=None):
        if not isinstance(value, GemmateError):  # out of memory in a step: which memory, the estimate, fix
            value = out_of_memory_error("this cell ran", value) or value
            etype = type(value)
        stb = [f"{etype.__name__}: {' '.join(str(value).split())}"]
        # IPython leaves the display of a custom exception to its handler
        shell._showtraceback(etype, value, stb)
        return stb

    if shell is not None:
        import torch

        shell.set_custom_exc((GemmateError, MemoryError, torch.OutOfMemoryError), show)


def _no_loading_bar(factory, args, kwargs):
    """transformers' tqdm hook: every bar as asked, except those of model loads and saves."""
    quiet = kwargs.get("desc") in ("Loading weights", "Writing model shards")
    return factory(*args, **(kwargs | {"disable": True} if quiet else kwargs))

