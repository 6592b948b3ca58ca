"""gemmate_lib: the small library behind the GemmaTE course notebooks.

One module per concern; each docstring names the notebook that teaches it:
the one config family: settings (typed groups, one name per setting), validation (the
one type checker and validator) and config (the profile `course_config`, YAML);
hardware (precision), hf_token (HF_TOKEN), colab (install, Drive, finding 03's adapter),
models (Hub, NF4 and the embedded Gemma 3 270M), data (the one reader; quotes),
generation (the one generate loop), fast_loss and training (LoRA SFT: the one builder
of LoraConfig / SFTConfig, the trainer), experiments and methods (side-by-side runs, 03
and 06), evaluation, plots, hub (save/load/merge/push),
fsio (paths, atomic writes), run (the run folder and manifest), temporal,
temporal_data and temporal_train (GemmaTE, 07), course (`make course`), gpu_check
(`make gpu-check`), and the command line: cli, checkpoints, hpo. Importing it changes nothing global; notebooks
call `quiet()`.
"""
from .config import EMBEDDED, HUB_DATASET, HUB_MODEL, CourseConfig, config_summary, course_config
from .errors import DataError, GemmateError, HardwareError, ModelLoadError, ParameterError, SaveError

__version__ = "0.1.0"


def quiet() -> None:
    """Silence the warnings and log lines that are noise for a learner (notebooks and commands call it once).

    - tqdm.auto warns that ipywidgets is missing and falls back to text bars, which is what we want;
    - peft 0.21 reads `is_gradient_checkpointing`, which transformers 5.x deprecates;
    - peft's `prepare_model_for_kbit_training` calls `gradient_checkpointing_enable`, likewise deprecated;
    - bitsandbytes 0.50 logs that an optional CPU kernel package is missing; its fallback works (01 uses it);
    - datasets draws a progress bar for every instant `map` over a few hundred quotes (TRL's label building);
    - peft says it ignores position ids under prompt tuning (06), which generate passes; ignoring them is right.
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
    """In a notebook, a course error shows as its one line (problem and fix), not a traceback through the library.

    The cell still fails (papermill and nbval see the error); `%tb` shows the full traceback.
    """
    try:
        shell = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - defined inside IPython only
    except NameError:
        return

    def show(shell, etype, value, tb, tb_offset=None):
        stb = [f"{etype.__name__}: {' '.join(str(value).split())}"]
        shell._showtraceback(etype, value, stb)  # IPython leaves the display of a custom exception to its handler
        return stb

    if shell is not None:
        shell.set_custom_exc((GemmateError,), show)


__all__ = ["EMBEDDED", "HUB_DATASET", "HUB_MODEL", "CourseConfig", "config_summary", "course_config", "quiet",
           "DataError", "GemmateError", "HardwareError", "ModelLoadError", "ParameterError", "SaveError"]
