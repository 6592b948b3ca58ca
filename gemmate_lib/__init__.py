"""gemmate_lib: the small library behind the GemmaTE course notebooks, one concern per module (each docstring
names the notebook that teaches it). Importing it changes nothing global; notebooks call `quiet()`. Set-up:
config, hardware, hf_token, colab, errors, selfcheck. Model and data: models, data, generation. Training:
training (LoRA SFT), fast_loss, experiments and methods (side-by-side runs, 03 and 06). Results: evaluation,
stats, plots, adapters, files, run_folder. temporal/: GemmaTE (07). cli/: the `gemmate` command. Maintainer
tooling lives outside, in tools/."""
from gemmate_lib.errors import GemmateError

__version__ = "0.1.0"


def quiet() -> None:
    """Silence the warnings and log lines that are noise for a learner (notebooks and commands call it once):
    tqdm's missing-ipywidgets notice (text bars are what we want), peft's use of gradient-checkpointing calls
    that transformers 5.x deprecates, bitsandbytes' missing optional CPU kernel (its fallback works),
    transformers' bar for each model load, datasets' bar for each instant `map`, and peft ignoring position
    ids under prompt tuning (06, rightly)."""
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
    _one_line_errors()


def _no_loading_bar(factory, args, kwargs):
    """transformers' tqdm hook: every bar as asked, except those of model loads and saves, which fill a
    notebook's outputs with a bar for each of the course's many loads and say nothing a learner needs."""
    quiet = kwargs.get("desc") in ("Loading weights", "Writing model shards")
    return factory(*args, **(kwargs | {"disable": True} if quiet else kwargs))


def _one_line_errors() -> None:
    """In a notebook, a course error shows as its one line (problem and fix), not a traceback through the
    library. The cell still fails (papermill and nbval see the error); `%tb` shows the full traceback."""
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

