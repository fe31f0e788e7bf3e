# adaloop: the two set-up commands are `make train` and `make test`; both install what they need first.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install train test equivalence docs serve clean gpu-deps gpu-check

# CPU-first: a machine without torch gets the pinned CPU build (torch==2.13.0); a machine that already has
# torch (for instance a CUDA build installed as the README says) keeps it.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,docs]"

train: install
	$(PYTHON) -m gpu.train

test: install
	$(PYTHON) -m pytest -q

equivalence: install
	$(PYTHON) -m pytest -q -k equivalence

docs: install
	$(PYTHON) -m mkdocs build --strict

serve: install
	$(PYTHON) -m mkdocs serve

clean:
	rm -rf site .pytest_cache .hypothesis build *.egg-info

# For a lent GPU machine, which installs nothing: the pure-Python (and abi3) dependencies it may lack, into an
# ignored folder the device tool carries (`carry: [".gpu-deps"]`); gpu.gpu_check appends it to sys.path.
gpu-deps:
	$(PIP) install --quiet --no-deps --target .gpu-deps tyro docstring-parser typeguard typing-extensions rich \
		markdown-it-py mdurl pygments shtab tqdm safetensors

# On the GPU machine: `make gpu-check` (CUDA/CuPy equivalence legs, bf16 calibration, tokens/s + MFU, compaction).
gpu-check:
	$(PYTHON) -m gpu.gpu_check
