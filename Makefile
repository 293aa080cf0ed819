# sglang-dspark: one-command set-up, test and demo on a CPU-only machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.sglang-dspark-installed
INSTALL_INPUTS := requirements/cpu.txt requirements/constraints-cpu.txt requirements/cpu-nodeps.txt \
                  pyproject.toml cpu_standins/pyproject.toml

# SGLang's CPU engine (native torch layers, torch_native attention).
export SGLANG_USE_CPU_ENGINE := 1

.PHONY: install test demo drafter clean-venv image

install: $(STAMP)

# Re-runs only when an install input changed; a second `make test` installs nothing.
$(STAMP): $(INSTALL_INPUTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements/constraints-cpu.txt -r requirements/cpu.txt
	$(PIP) install -q --no-deps -r requirements/cpu-nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e cpu_standins -e .
	@touch $@

test: install
	$(PY) -m pytest

demo: install
	$(PY) -m sglang_dspark.demo run

# Reproduces sglang_dspark/drafters/smollm2-135m/ (about 3 h on a 2-core CPU; rerun to resume):
# distils the recipes' ShareGPT + code corpora by shard (prompts with a stored answer in
# DRAFTER_ANSWERS are read out, not generated again), trains the base recipe, continues it twice on the
# larger corpus (--init-from), ships with its acceptance figures.
# `python -m sglang_dspark.train.answers --data RUN/data --out $(DRAFTER_ANSWERS)` keeps new answers.
DRAFTER_BASE_RUN ?= .cache/drafter-run
DRAFTER_CONTINUED_RUN ?= .cache/drafter-run-continued
DRAFTER_RUN ?= .cache/drafter-run-continued-2
DRAFTER_ANSWERS ?= recipes/answers/smollm2-135m.jsonl.gz
SMOLLM2_DIR := $(or $(SGLANG_DSPARK_CACHE),$(HOME)/.cache/sglang-dspark)/models/SmolLM2-135M-Instruct
drafter: install
	$(PY) -m sglang_dspark.demo prepare
	$(PY) -m sglang_dspark.train --target $(SMOLLM2_DIR) --recipe recipes/smollm2-135m-drafter.json \
		--out $(DRAFTER_BASE_RUN) --seed 0 --resume --answers $(DRAFTER_ANSWERS)
	$(PY) -m sglang_dspark.train --target $(SMOLLM2_DIR) --recipe recipes/smollm2-135m-drafter-continue.json \
		--out $(DRAFTER_CONTINUED_RUN) --seed 0 --resume --answers $(DRAFTER_ANSWERS) --init-from $(DRAFTER_BASE_RUN)/drafter
	$(PY) -m sglang_dspark.train --target $(SMOLLM2_DIR) --recipe recipes/smollm2-135m-drafter-continue-2.json \
		--out $(DRAFTER_RUN) --seed 0 --resume --answers $(DRAFTER_ANSWERS) --init-from $(DRAFTER_CONTINUED_RUN)/drafter
	$(PY) -m sglang_dspark.train.ship --run $(DRAFTER_RUN) --target $(SMOLLM2_DIR) \
		--dest sglang_dspark/drafters/smollm2-135m \
		--eval sglang_dspark/data/eval_sharegpt.jsonl --eval tests/data/eval_chat.jsonl \
		--eval tests/data/eval_code.jsonl --eval-max-new-tokens 64

clean-venv:
	rm -rf $(VENV)

# Container image sglang-dspark:<package version> (docker/Dockerfile); needs a Docker engine.
DOCKER        ?= docker
IMAGE_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' sglang_dspark/__init__.py)
image:
	@if ! $(DOCKER) info >/dev/null 2>&1; then \
		echo "make image: no Docker engine reachable here ('$(DOCKER) info' failed). On a machine with one run:" >&2; \
		echo "  DOCKER_BUILDKIT=1 docker build -f docker/Dockerfile --build-arg VERSION=$(IMAGE_VERSION) -t sglang-dspark:$(IMAGE_VERSION) ." >&2; \
		exit 1; \
	fi
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile --build-arg VERSION=$(IMAGE_VERSION) -t sglang-dspark:$(IMAGE_VERSION) .
