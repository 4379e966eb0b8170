# Two entry points on a fresh machine: `make demo` and `make test` (both create .venv and install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROOT ?= runs
DEMO_DEFENSES := vanilla pgd-at trades nat

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@for d in $(DEMO_DEFENSES); do \
		$(BIN)/natbench run --task digits --defense $$d --seed 0 --root $(ROOT) --no-leaderboard || exit $$?; \
	done
	$(BIN)/natbench leaderboard --task digits --root $(ROOT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(ROOT) .pytest_cache
