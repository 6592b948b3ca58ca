"""gemmate_lib: the small library behind the GemmaTE course notebooks. Read it like a table of contents.

The lessons' core, one concern per module (each docstring names the notebook that teaches it):
- set-up: config (every setting, its help text and the profiles), hardware (device and dtype),
  hf_token (HF_TOKEN), colab (install, Drive), errors (one-line problems with their fix), selfcheck;
- model and data: models (Hub, NF4 and the embedded Gemma 3 270M), data (quotes), generation;
- training: training (LoRA SFT: the one builder of LoraConfig / SFTConfig), fast_loss,
  experiments and methods (side-by-side runs, 03 and 06);
- results: evaluation, stats, plots, adapters (save, load, merge, push), files (atomic writes),
  run_folder (the run folder and its manifest);
- temporal/: GemmaTE (07): timestamps, model, data, tasks, training;
- cli/: the `gemmate` command and its CLI-only features (train, checkpoints, storage, SST-2/SQuAD v2 tasks,
hpo, serve). Maintainer tooling (running and syncing notebooks, the GPU check) lives outside, in tools/.
Importing it changes nothing global; notebooks call `quiet()`.
"""
from gemmate_lib.errors import GemmateError

__version__ = "0.1.0"


def quiet() -> None:
    """Silence the warnings and log lines that are noise for a learner (notebooks and commands call it once).

    - tqdm.auto warns that ipywidgets is missing and falls back to text bars, which is what we want;
    - peft 0.21 reads `is_gradient_checkpointing`, which transformers 5.x deprecates;
    - peft's `prepare_model_for_kbit_training` calls `gradient_checkpointing_enable`, likewise deprecated;
    - bitsandbytes 0.50 logs that an optional CPU kernel package is missing; its fallback works (01 uses it);
    - datasets draws a progress bar for every instant `map` over a few hundred quotes (TRL's label building);
    - peft says it ignores position ids under prompt tuning
    (06), which generate passes; ignoring them is right.
    """
    import logging
    import os
    import sys
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported ...
    if "datasets" in sys.modules:  # ... or already imported
        sys.modules["datasets"].disable_progress_bars()
    _one_line_errors()


def _one_line_errors() -> None:
    """In a notebook, a course error shows as its one line
    (problem and fix), not a traceback through the library.

    The cell still fails (papermill and nbval see the error); `%tb` shows the full traceback.
    """
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

