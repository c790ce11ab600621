# Set-up and entry points. Every target creates the virtual environment first; running any
# target twice is harmless (the install is skipped while pyproject.toml is unchanged).
VENV ?= .venv
PYTHON ?= python3
CYCADA_DATA ?= ../shared/data
export CYCADA_DATA

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Where PyTorch comes from. The CPU build must be chosen explicitly: a bare 'torch' requirement
# takes the multi-GB CUDA build. The default takes torch==2.13.0 from the package index pip is
# configured with (this project's machines hold the CPU wheel there); elsewhere:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   make setup TORCH_SPEC=/wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# make setup-gpu: PyTorch's CUDA build (pip's default index holds it) and onnxruntime-gpu;
# GPU_EXTRA=tensorrt adds TensorRT for `cycada export --tensorrt`
TORCH_GPU_SPEC ?= torch
TORCH_GPU_INDEX ?=
GPU_EXTRA ?= gpu

.PHONY: setup setup-gpu demo test test-fast gpu-check lint format docs clean

# the real tritonserver (Triton 2.51 + Python backend) unpacked from the nvidia-pytriton wheel
# into $(VENV)/opt, with its own numpy<2 environment for the backend stub; promtool (Debian's
# Prometheus 2.42) for the alert-rule tests of deploy/prometheus (where apt cannot fetch it,
# those tests skip and say why)
define install_servers
	$(BIN)/python -m cycada.serving.server_install
	-test -x $(BIN)/promtool || (cd $(VENV) && apt-get download -q prometheus >/dev/null 2>&1 \
	  && mkdir -p opt/prometheus && dpkg-deb -x prometheus_*.deb opt/prometheus \
	  && rm -rf opt/prometheus/usr/share \
	  && ln -sf ../opt/prometheus/usr/bin/promtool bin/promtool; rm -f prometheus_*.deb)
endef

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# a host set up with make setup-gpu stays a GPU host: never the CPU builds beside its own
	@if grep -qs gpu $(STAMP); then $(MAKE) --no-print-directory setup-gpu; exit 0; fi; \
	set -e; \
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH_SPEC)'; \
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,cpu,docs]'
	$(install_servers)
	grep -qs gpu $(STAMP) || echo cpu > $(STAMP)

setup: $(STAMP)

setup-gpu:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(TORCH_GPU_INDEX),--index-url $(TORCH_GPU_INDEX)) \
	  '$(TORCH_GPU_SPEC)'
	@# both ONNX Runtime builds install the same module: the CPU one goes first
	-$(BIN)/pip uninstall --quiet --yes onnxruntime 2>/dev/null
	$(BIN)/pip install --quiet -e '.[dev,$(GPU_EXTRA),docs]'
	$(install_servers)
	echo gpu > $(STAMP)

# The main job on the embedded default: synthetic scenes → CyCADA segmentation (demo preset) →
# export → the embedded tritonserver → segment a clip, translate a folder, bench, then the
# drift loop at dusk: monitor, collect, adapt again, version 2 (≈5 min).
demo: $(STAMP)
	$(BIN)/cycada demo --out runs/demo

# Three pytest-xdist workers, one module per worker at a time (module fixtures: one server, one
# trained run), and one intra-op thread per process: two-thread torch processes on two cores
# only spin against each other. A third worker fills some of the time the others wait on servers
# and child processes. Modules go out in tests/conftest.py's order, the longest first (this
# 2-vCPU VM: 9.1-9.4 min of pytest; the VM's speed drifts by a fifth over a day).
TEST_PARALLEL ?= -n 3 --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(TEST_PARALLEL)

# the unit tier: no training end to end, no tritonserver (a couple of minutes)
test-fast: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(TEST_PARALLEL) -m "not slow and not server"

# Every GPU-only test and benchmark (served DRN-C-26 with the compiled package vs every engine in
# process, eight live video streams, graph against network, the GPU tests, DRN-C-26 stage
# speeds): about 11 minutes,
# results in gpu-results/. ARGS="--only digits-paper" runs the paper's digit schedule instead.
gpu-check: $(STAMP)
	$(BIN)/python -m cycada.gpu_check --out gpu-results $(ARGS)

# the documentation site (docs/, mkdocs.yml) into build/site; the tests build it with --strict
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
