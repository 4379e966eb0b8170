# Two entry points on a fresh machine: `make demo` and `make test` (both create .venv and install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROOT ?= runs
DEMO_DEFENSES := vanilla pgd-at trades nat
COMPARE_DEFENSES := vanilla pgd-at trades mart awp nuat fast-at nat trades+nat pgd-at+nat+awp

.PHONY: demo test test-fast install clean bench compare-digits

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-deps 'imagecorruptions==1.1.2'  # it declares opencv-python; natbench's opencv-python-headless is its cv2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@for d in $(DEMO_DEFENSES); do \
		$(BIN)/natbench run --task digits --defense $$d --seed 0 --root $(ROOT) --no-leaderboard || exit $$?; \
	done
	$(BIN)/natbench leaderboard --task digits --root $(ROOT)

# Issue 3's digits comparison: every defense at the default (full) profile, seed 0; pgd-at and nat
# also with seeds 1 and 2. Writes leaderboards/digits.* at the end. About 20-30 min on 2 CPU cores.
compare-digits: $(STAMP)
	$(BIN)/natbench run --task digits $(foreach d,$(COMPARE_DEFENSES),--defense $(d)) --seed 0 --root $(ROOT) --no-leaderboard
	$(BIN)/natbench run --task digits --defense pgd-at --defense nat --seed 1 --seed 2 --root $(ROOT) --no-leaderboard
	$(BIN)/natbench leaderboard --task digits --root $(ROOT) --write --out leaderboards --format html > /dev/null

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The edit-test loop: everything but the tests marked slow (end-to-end training, the oracle cross-checks).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/nat_overhead.py --arch small_cnn --batch 64 --n-images 512 --repeats 15 --threads 1

clean:
	rm -rf $(VENV) $(ROOT) .pytest_cache
