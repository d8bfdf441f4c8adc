# The two commands: `make demo` (set up, train a small model on the built-in corpus, sample it)
# and `make test` (set up, run the test suite). Each sets up its own virtual environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 60

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml plugins/chargen-mirostat/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plot]' -e plugins/chargen-mirostat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/chargen train builtin:python-docs --layers 2 --units 128 --seq-len 64 --batch-size 32 \
		--learning-rate 0.005 --time-limit $(DEMO_SECONDS) --eval-every 150 --preview-length 60
	$(BIN)/chargen sample --length 300 --temperature 0.7 --seed 1

# Lint first (CI enforces it), then the suite in two worker processes (pytest-xdist), one per core.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
