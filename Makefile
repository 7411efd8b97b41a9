# The README's two commands: `make demo` (set up, build the shipped trained models, run the demo) and `make test`.
VENV   ?= .venv
# Extra build_engines.sh options, e.g. `make test ENGINES=--device=cpu`.
ENGINES ?=
# The demo serves the trained tiny checkpoints shipped in checkpoints/ (--trained copies them rather than training
# when their recipe matches); the tests build random-weight ones of the same size, which need no training.
DEMO_ENGINES ?= --trained
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: install engines demo test test-unit test-integration lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch is pinned to the CPU build in pyproject.toml; pip resolves everything in one go.
	$(PY) -m pip install --quiet --progress-bar off -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

# Idempotent: each step is skipped when its output is up to date.
engines: install
	PYTHON=$(PY) ./build_engines.sh $(ENGINES)

demo: install
	PYTHON=$(PY) ./build_engines.sh $(DEMO_ENGINES) $(ENGINES)
	$(VENV)/bin/spotvlm demo

# Two pytest-xdist workers, a file's tests on one worker (its module fixtures and servers are built once). The
# integration tests mostly wait for servers to start and frames to pace, so two files at once share 2 cores well.
test: engines
	$(VENV)/bin/pytest -n 2 --dist loadfile tests/unit
	$(VENV)/bin/pytest -n 2 --dist loadfile tests/integration

test-unit: engines
	$(VENV)/bin/pytest -n 2 --dist loadfile tests/unit

test-integration: engines
	$(VENV)/bin/pytest -n 2 --dist loadfile tests/integration

lint: install
	$(VENV)/bin/ruff check python_backends client engines evaluation training load_tests spotvlm tests model_repository
	$(VENV)/bin/ruff format --check python_backends client engines evaluation training load_tests spotvlm tests model_repository

clean:
	rm -rf build model_repository/*/*/config.pbtxt model_repository/*/*/1/model.onnx* model_repository/*/*/1/model.plan model_repository/*/*/1/export.json
