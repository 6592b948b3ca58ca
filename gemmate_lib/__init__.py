"""gemmate_lib: the small library behind the GemmaTE course notebooks.

One module per concern; each docstring names the notebook that teaches it:
config (profile and settings), hardware (precision), token (HF_TOKEN), models
(Hub, NF4 and the embedded Gemma 3 270M), data (quotes), generation, fast_loss and
training (LoRA SFT), evaluation, hub (save/load/push), temporal, temporal_data,
temporal_train and temporal_cli (GemmaTE, 04), run (the run folder and manifest),
course (`make course`), and the command line: cli, run_config, checkpoints, hpo.
"""
import logging
import warnings

# tqdm.auto warns that ipywidgets is missing and falls back to text bars, which is what we want.
warnings.filterwarnings("ignore", message="IProgress not found")
# peft 0.21 reads `is_gradient_checkpointing`, which transformers 5.x deprecates: not the learner's concern.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# bitsandbytes 0.50 logs that an optional CPU kernel package is missing; its fallback works (01 uses it).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import EMBEDDED, HUB_DATASET, HUB_MODEL, CourseConfig, config_summary, course_config
from .errors import DataError, GemmateError, HardwareError, ModelLoadError, ParameterError

__version__ = "0.1.0"
COURSE_REPO = "gemmate-course/gemmate"  # GitHub owner/name: Colab badges and install cells use it (a test checks)

__all__ = ["EMBEDDED", "HUB_DATASET", "HUB_MODEL", "CourseConfig", "config_summary", "course_config",
           "DataError", "GemmateError", "HardwareError", "ModelLoadError", "ParameterError"]
