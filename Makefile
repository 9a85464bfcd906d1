# Two entry points: `make demo` (install + run the main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here for this machine's install step (a CPU build on disk); the package itself
# accepts a range (see pyproject.toml).
TORCH_PIN ?= torch==2.13.0
# ruff pinned so that `ruff format --check` gives the same answer on every machine.
RUFF_PIN ?= ruff==0.17.6

.PHONY: install test demo lint clean system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test]" "$(TORCH_PIN)" "$(RUFF_PIN)"
	# hear-validator (the HEAR API checker) and heareval (the kit, for its own PARAM_GRID and fold
	# assignment) pin TensorFlow and numpy 1.19 they do not need: their real needs are in [test].
	$(PY) -m pip install -q --no-deps hearvalidator==2021.0.2 heareval==2021.1.3
	touch $@

install: $(VENV)/.installed

# Optional Debian packages for real synthesised speech and instrument notes in the built-in data.
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		(command -v espeak-ng >/dev/null && command -v fluidsynth >/dev/null && [ -e /usr/share/sounds/sf2/FluidR3_GM.sf2 ]) || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng fluidsynth fluid-soundfont-gm >/dev/null) || \
		echo "note: could not install espeak-ng/fluidsynth; the data generator falls back to pure-numpy synthesis"; \
	else \
		echo "note: not root or no apt-get: skipping espeak-ng/fluidsynth (pure-numpy synthesis only)"; \
	fi

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q --durations=15

demo: install system-deps
	$(VENV)/bin/mwmae demo --out demo_out

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out build *.egg-info src/*.egg-info
