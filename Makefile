# Set-up and entry points. Every target creates the virtual environment first; running any
# target twice is harmless (the install is skipped while pyproject.toml is unchanged).
VENV ?= .venv
PYTHON ?= python3
CYCADA_DATA ?= ../shared/data
export CYCADA_DATA

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast gpu-check lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# CPU torch first, from the local wheel: a bare 'torch' requirement would pull a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	# tested versions from constraints.txt; ONNX Runtime's CPU build ([gpu] on a CUDA host)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,cpu]'
	# the real tritonserver (Triton 2.51 + Python backend) unpacked from the nvidia-pytriton
	# wheel into $(VENV)/opt, with its own numpy<2 environment for the backend stub
	$(BIN)/python -m cycada.serving.server_install
	# promtool (Debian's Prometheus 2.42) for the alert-rule tests of deploy/prometheus; where
	# apt cannot fetch it, those tests skip and say why
	-test -x $(BIN)/promtool || (cd $(VENV) && apt-get download -q prometheus >/dev/null 2>&1 \
	  && mkdir -p opt/prometheus && dpkg-deb -x prometheus_*.deb opt/prometheus \
	  && rm -rf opt/prometheus/usr/share \
	  && ln -sf ../opt/prometheus/usr/bin/promtool bin/promtool; rm -f prometheus_*.deb)
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default: synthetic scenes → CyCADA segmentation (demo preset) →
# export → the embedded tritonserver → segment a clip, translate a folder, bench, then the
# drift loop at dusk: monitor, collect, adapt again, version 2 (≈5 min).
demo: $(STAMP)
	$(BIN)/cycada demo --out runs/demo

# Two pytest-xdist workers, one module per worker at a time (module fixtures: one server, one
# trained run), and one intra-op thread per process: two-thread torch processes on two cores
# only spin against each other (BENCHMARKS.md, "make test").
TEST_PARALLEL ?= -n 2 --dist loadfile

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(TEST_PARALLEL)

# the unit tier: no training end to end, no tritonserver (a couple of minutes)
test-fast: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(TEST_PARALLEL) -m "not slow and not server"

# Every GPU-only test and benchmark (served DRN-C-26 with the compiled package vs every engine in
# process, eight live video streams, the GPU tests, DRN-C-26 stage speeds): about 10 minutes,
# results in gpu-results/. ARGS="--only digits-paper" runs the paper's digit schedule instead.
gpu-check: $(STAMP)
	$(BIN)/python -m cycada.gpu_check --out gpu-results $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
