# dsn — two quick-start commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DSN    := $(VENV)/bin/dsn
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_DATA ?= data/demo

export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=true

.PHONY: venv demo test test-slow lint docs clean

venv: $(STAMP)

# torch first: an unpinned torch pulled in by lightning would download a multi-GB CUDA build. braindecode (the dev
# extra's networks) pulls in a torchaudio built for another torch: .ci/torchaudio_fallback.py makes it pure Python.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) .ci/torchaudio_fallback.py
	touch $(STAMP)

demo: $(STAMP)
	$(DSN) synth $(DEMO_DATA) --subjects 8 --hours 8 --seed 0
	$(DSN) fit --config conf/demo.yaml --tracking.register deepsleepnet --tracking.register_alias champion
	@echo
	@echo "Score a night with the registered model:"
	@echo "  $(DSN) predict $(DEMO_DATA)/SC4001E0-PSG.edf --model models:/deepsleepnet@champion --out predictions/"
	@echo
	@echo "Results are in the MLflow tracking home mlruns/ (sqlite:///mlruns/mlflow.db)."
	@echo "Open them with:  $(DSN) ui"

test: $(STAMP)
	$(PY) -m pytest

# DDP on 2 CPU processes, a real MLflow server, a real PostgreSQL (skipped without its binaries), learning quality
test-slow: $(STAMP)
	$(PY) -m pytest -m slow --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check dsn tests

# The documentation site (Sphinx, warnings as errors): docs/_build/html/index.html. The docs extra is part of
# dev (make venv installs it); the stamp reinstalls it only when pyproject.toml changes.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -b html -W --keep-going -q docs docs/_build/html
	@echo "open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache docs/_build docs/generated
