# Two commands do all the set-up: `make demo` and `make test` (both run `make setup` first).
PYTHON ?= python3.11
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export RAY_USAGE_STATS_ENABLED = 0
export PYTHONDONTWRITEBYTECODE = 1
# The cached venv is shared by every checkout on the machine and its editable install points at
# the checkout that ran setup last; PYTHONPATH makes this checkout's code win in any case. The
# install runs with the cache's own python, so the `lmd-batch` script's #! line stays valid after
# the checkout that installed it is deleted (a CI clone).
export PYTHONPATH := $(CURDIR)

.PHONY: setup setup-main setup-llm setup-chromium test test-fast demo models lock clean

setup: setup-main setup-llm

setup-main:
	@requirements/setup_env.sh .venv requirements/main.lock $(PYTHON)
	@"$$(readlink -f .venv)/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

setup-llm:
	@requirements/setup_env.sh .venv-llm requirements/llm-cpu.lock $(PYTHON)

# Headless Chromium (Debian packages) for the HTML report's rendering test; a no-op once installed.
setup-chromium:
	@requirements/setup_chromium.sh || echo "setup: continuing without Chromium (tests/test_report.py will try to install it, else skip)"

models: setup
	.venv/bin/lmd-batch models prepare

test: setup setup-chromium
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup-main
	.venv/bin/python -m pytest -q -m "not slow and not llm" $(PYTEST_ARGS)

demo: setup
	.venv/bin/lmd-batch run jobs/demo.yaml

# Regenerate requirements/main.lock from requirements/main.in (needs the network).
lock:
	rm -rf /tmp/lmd-batch-lock && $(PYTHON) -m venv /tmp/lmd-batch-lock
	/tmp/lmd-batch-lock/bin/pip install -r requirements/main.in
	{ sed -n '1,3p' requirements/main.lock; /tmp/lmd-batch-lock/bin/pip freeze --all | grep -v '^pip=='; } > requirements/main.lock.new
	mv requirements/main.lock.new requirements/main.lock

clean:
	rm -rf runs .pytest_cache
