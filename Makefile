# mgr: `make demo` and `make test` are the only commands a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Torch is capped for this kind of machine here (not in pyproject): a CPU wheel on disk
# is taken when present, so no multi-GB CUDA build is downloaded.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13*cpu*.whl))

export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO ?= 0

.PHONY: install demo test bench clean chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	echo 'torch<2.14' > $(VENV)/constraints.txt
	$(if $(TORCH_WHEEL),$(PY) -m pip install -q -c $(VENV)/constraints.txt "$(TORCH_WHEEL)")
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mgr demo --workdir demo-run $(if $(MUSIC),--music $(MUSIC))

test: install
	@test -x /usr/bin/chromium || echo "note: no /usr/bin/chromium: the browser tests of the reports skip (make chromium installs it)"
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests
	# a 3-node Ray losing a node: in its own session, not beside the suite's Ray on the same cores
	MGR_NODE_LOSS_TEST=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_faults.py -k node_removed

# Debian's chromium renders the HTML reports in the tests (headless); apt, as root or with sudo
chromium:
	test -x /usr/bin/chromium || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y --no-install-recommends chromium; }

# benchmarks print JSON lines; run them on a quiet machine
bench: install
	$(PY) tests/bench/bench_extract.py
	$(PY) tests/bench/bench_train.py
	$(PY) tests/bench/bench_label.py
	$(PY) tests/bench/bench_label.py --excerpts 3 --copies 20

clean:
	rm -rf $(VENV) demo-run .pytest_cache
