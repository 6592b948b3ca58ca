"""Hide the venv's editable install of the course: `gemmate_lib` then imports only through sys.path (Colab).
With COLAB_SIM_DIST_PACKAGES set, that folder stands for Colab's preinstalled packages: it comes after the
venv's own site-packages on sys.path, and pip in the kernel installs into it (tests/learner_path.py)."""
import os
import sys

if os.environ.get("COLAB_SIM_DIST_PACKAGES"):
    sys.path.append(os.environ["COLAB_SIM_DIST_PACKAGES"])

sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
