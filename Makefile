# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin

.PHONY: setup demo smoke test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned: the CPU build; an unpinned torch would pull a multi-GB CUDA build
# constraints.txt: the exact versions the suite was run with, so a fresh machine gets what CI tested
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/rlir demo

smoke: setup
	$(BIN)/rlir demo --smoke --run runs/smoke

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/collect_speed.py

clean:
	rm -rf $(VENV) runs
