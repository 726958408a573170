# Two commands do everything on a fresh machine: `make run` serves, `make test` tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP  := $(VENV)/.install-stamp
LS_VENV := .venv-ls
LS_STAMP := $(LS_VENV)/.install-stamp
# On a CUDA machine torchvision matching torch 2.13 belongs in the install (segment-anything needs it);
# on CPU machines the index only has a CUDA build of it, which breaks transformers: never install it there.
TORCHVISION := torchvision==0.28.0
# auto: install it when nvidia-smi sees a GPU; 1: always (image builds have no GPU); 0: never
WITH_TORCHVISION ?= auto
# An index that holds the torch build this machine wants, searched beside the default one. PyPI's Linux
# x86_64 torch is a CUDA build (about 3 GB with its nvidia-* packages, though it runs on a CPU too); on a
# CPU-only machine `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build.
TORCH_INDEX ?=

.PHONY: install run test bench lock clean

install: $(STAMP)

# Everything installs from the *.lock files (pip-compile output, `make lock`), never from the hand-edited
# requirements*.txt. torch is the one package the locks leave out: its build differs by machine (CPU here,
# CUDA elsewhere), so it is installed first from its one pin, under the lock's pins for its own dependencies.
$(STAMP): requirements-torch.txt requirements.lock requirements-test.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements.lock $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r requirements-torch.txt  # torch FIRST
	@if [ "$(WITH_TORCHVISION)" = 1 ] || { [ "$(WITH_TORCHVISION)" = auto ] && nvidia-smi -L >/dev/null 2>&1; }; then \
	    echo "installing $(TORCHVISION) (CUDA)"; $(PIP) install -c requirements.lock $(TORCHVISION); fi
	$(PIP) install --no-deps -r requirements.lock -r requirements-test.lock
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PIP) check
	@$(PY) -c "import importlib.util as u, torch, transformers, label_studio_sdk, cv2; assert u.find_spec('segment_anything'); print('installed: torch', torch.__version__, '| transformers', transformers.__version__)"
	@touch $(STAMP)

# the real Label Studio server, for the end-to-end tests only
$(LS_STAMP): requirements-labelstudio.lock
	@test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip -q --disable-pip-version-check install --no-deps -r requirements-labelstudio.lock
	$(LS_VENV)/bin/pip -q --disable-pip-version-check check
	@touch $(LS_STAMP)

run: install
	$(VENV)/bin/segagent serve

test: install $(LS_STAMP)
	@scripts/ensure-docker-compose    # the compose file is validated by docker-compose (installed when missing)
	@scripts/ensure-chromium          # the browser tests drive Debian's chromium (installed when missing)
	@scripts/oracle-env               # the original Qwen-VL-Chat code (transformers 4.32) the native port is tested against
	@scripts/oracle-env-simpleclick   # the original SimpleClick code (the release's copy) the native port is tested against
	LABEL_STUDIO_BIN=$(CURDIR)/$(LS_VENV)/bin/label-studio scripts/with-redis $(PY) -m pytest -ra $(PYTEST_ARGS)

bench: install    # every bench, even after one fails (the report names those without results)
	-$(PY) -m bench.click_cost
	-$(PY) -m bench.click_used
	-$(PY) -m bench.grabcut_noc
	-$(PY) -m bench.grabcut_speed
	-$(PY) -m bench.score_quality
	-$(PY) -m bench.hf_sam_family
	-$(PY) -m bench.text_start
	-$(PY) -m bench.trajectory_throughput
	-$(PY) -m bench.training_throughput
	-$(PY) -m bench.star_round
	-$(PY) -m bench.forced_prefix
	-$(PY) -m bench.loop_overhead
	-$(PY) -m bench.qwen_native
	-$(PY) -m bench.load_soak
	-$(PY) -m bench.interactive_latency
	-$(PY) -m bench.simpleclick_cost
	-scripts/with-redis $(PY) -m bench.queue_overhead
	-scripts/with-redis $(PY) -m bench.queue_workers
	$(PY) -m bench.report    # bench/REPORT.md (+ PNGs in bench/results/) from the figures each bench recorded

# Regenerate the locks from the requirements*.txt. Pins already in a lock are kept; to move one package:
# edit its requirements*.txt line (or not, for a transitive one) and `make lock UPGRADE=transformers`.
# No index or find-links lines: a user's machine resolves the same pins from the public index.
LOCK := $(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
	$(if $(UPGRADE),--upgrade-package $(UPGRADE))
lock: install
	$(LOCK) --unsafe-package torch -o requirements.lock requirements-torch.txt requirements.txt
	$(LOCK) --unsafe-package torch -c requirements.lock -o requirements-test.lock requirements-test.txt
	$(LOCK) --allow-unsafe -o requirements-labelstudio.lock requirements-labelstudio.txt
	$(LOCK) --allow-unsafe -o requirements-oracle.lock requirements-oracle.txt
	$(LOCK) --unsafe-package numpy -o requirements-simpleclick-oracle.lock requirements-simpleclick-oracle.txt

clean:
	rm -rf $(VENV) $(LS_VENV) .venv-oracle .venv-oracle-simpleclick .pytest_cache
