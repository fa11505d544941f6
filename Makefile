# `make run` and `make test` work on a fresh clone: they create .venv first (CPU torch via constraints.txt).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,hf,onnx,remote,images]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kd run pipeline.yaml

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.all

clean:
	rm -rf runs .pytest_cache
