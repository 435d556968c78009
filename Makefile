# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin
DEMO    ?=

.PHONY: setup browser demo smoke test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned: the CPU build; an unpinned torch would pull a multi-GB CUDA build
# constraints.txt: the exact versions the suite was run with, so a fresh machine gets what CI tested
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

# the browser tests drive Debian's chromium through Selenium (no browser download); root installs it
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get install -y -q chromium chromium-driver || \
	    (apt-get update -q && apt-get install -y -q chromium chromium-driver)) >/dev/null; } || \
	  echo "note: chromium/chromium-driver missing and not root: the browser tests will be skipped"

setup: $(VENV)/.installed browser

# make demo DEMO="--config configs/demo/gain_2h.yaml": the two-hour budget of the component runs where RLIR gained
demo: setup
	$(BIN)/rlir demo $(DEMO)

smoke: setup
	$(BIN)/rlir demo --smoke --run runs/smoke

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/collect_speed.py

clean:
	rm -rf $(VENV) runs
