# Set-up, tests and the demo. Everything installs into .venv from uv.lock.
PY ?= python3
VENV := .venv
UV := $(PY) -m uv

.PHONY: install test demo bench clean

# Python caches each module's bytecode (.pyc) the first time a process imports it. With
# PYTHONDONTWRITEBYTECODE set (as on this machine) it never does, and every process (Ray workers,
# loader workers, jobs, CLI runs) compiled torch, DeepSpeed and MLflow from source again: ~23 s to
# import torch+DeepSpeed+Ray, ~10 s with .pyc. So the project's commands write it. Compiling the
# whole venv at install instead (uv sync --compile-bytecode) took 87 s for 22,153 files, plus 23 s for
# the linters' venv; the first `import torch, deepspeed, ray, mlflow, timm, train.loop` compiles the
# 5,272 it needs in ~32 s, once.
unexport PYTHONDONTWRITEBYTECODE

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock infra/lint/pyproject.toml infra/lint/uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install --quiet uv || $(PY) -m pip install --quiet --user uv \
		|| $(PY) -m pip install --quiet --break-system-packages uv
	$(UV) sync --frozen --extra dev
	@# The infrastructure linters (cfn-lint, checkov, hadolint) in their own locked environment:
	@# checkov pins networkx<2.7, which scikit-image cannot use.
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/.venv-lint $(UV) sync --frozen --project infra/lint
	@# DeepSpeed JIT-builds its CPU communication op and its CPU Adam (deepspeed.offload) on first
	@# use (~1-2 min each); once per machine, cached in ~/.cache/torch_extensions outside the clone.
	$(VENV)/bin/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null
	$(VENV)/bin/python -c "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()" >/dev/null
	@touch $@

test: install
	$(VENV)/bin/pytest

demo: install
	$(VENV)/bin/python -m cluster.local.demo

bench: install
	@# The loader bench's peers (MosaicML Streaming, LitData) in their own locked environment.
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/.venv-peers $(UV) sync --frozen --project bench/peers
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/face_detectors.py
	$(VENV)/bin/python bench/jpeg_decode.py
	$(VENV)/bin/python bench/loader.py
	$(VENV)/bin/python bench/zero_vs_ddp.py
	$(VENV)/bin/python bench/model_states.py --stages 0 2 --precision fp32
	$(VENV)/bin/python bench/train_step.py --plain --zero 0
	$(VENV)/bin/python bench/step_syncs.py
	$(VENV)/bin/python bench/gpu_memory.py
	$(VENV)/bin/python bench/loader_order.py --rounds 2
	$(VENV)/bin/python bench/block_order.py
	$(VENV)/bin/python bench/index_memory.py
	$(VENV)/bin/python bench/get_cpu.py
	$(VENV)/bin/python bench/s3_clients.py
	$(VENV)/bin/python bench/order_auc.py
	$(VENV)/bin/dfdc plan

clean:
	rm -rf $(VENV) .venv-lint .venv-peers .pytest_cache
