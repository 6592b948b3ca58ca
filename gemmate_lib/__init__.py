"""gemmate_lib: the library behind the course's notebooks and the `gemmate` command, one concern per module
(each docstring names the notebook that teaches it). Importing it changes nothing global; notebooks call
`quiet()`. Maintainer tooling lives in tools/. Which notebook uses which modules:

  every notebook           config, models, run_folder, files, colab, selfcheck, exercises, and:
  00_setup                 hardware, hf_token, errors, fit
  01_load_4bit             data, evaluation, plots, errors, fit
  02_baseline_generation   text_generation
  03_lora_sft              data, training, preflight, generations, methods, text_generation, plots, adapters,
                           hardware, errors
  04_evaluation            data, evaluation (stats), plots, adapters, hardware
  05_save_and_push         data, training, text_generation, adapters, export, hardware, errors, fit
  06_compare_methods       data, methods, evaluation, stats, plots, hardware, errors, fit
  07_temporal_encoding     temporal/ (timestamps, model, data, tasks, training), training, data, plots, errors
  `gemmate` (cli/)         main; train (checkpoints, storage, tasks), hpo, serve; evaluation, export,
                           temporal/training

Every training run goes through training.train (methods.train_arm, training.train_lora, cli/train and
temporal/training wrap it); fast_loss is its loss."""
from gemmate_lib.housekeeping.errors import GemmateError

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
        stb = [f"{etype.__name__}: {' '.join(str(value).split())}"]
        # IPython leaves the display of a custom exception to its handler
        shell._showtraceback(etype, value, stb)
        return stb

    if shell is not None:
        shell.set_custom_exc((GemmateError,), show)


def _no_loading_bar(factory, args, kwargs):
    """transformers' tqdm hook: every bar as asked, except those of model loads and saves."""
    quiet = kwargs.get("desc") in ("Loading weights", "Writing model shards")
    return factory(*args, **(kwargs | {"disable": True} if quiet else kwargs))

