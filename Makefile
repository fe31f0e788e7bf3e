# adaloop: the two set-up commands are `make train` and `make test`; both install what they need first.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install train test equivalence docs serve clean gpu-deps gpu-check

# The docs site serves its own math renderer: MathJax from the npm package, into build/mathjax (not committed),
# copied into the site by hooks/mathjax.py. Installed once per version; without npm only the docs build misses it.
MATHJAX_VERSION = 3.2.2
MATHJAX_DIR = build/mathjax

# CPU-first: a machine without torch gets the pinned CPU build (torch==2.13.0); a machine that already has
# torch (for instance a CUDA build installed as the README says) keeps it.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,docs]"
	@grep -qs '"version": "$(MATHJAX_VERSION)"' $(MATHJAX_DIR)/node_modules/mathjax/package.json || \
	  npm install --prefix $(MATHJAX_DIR) --no-save --no-audit --no-fund --loglevel=error \
	    mathjax@$(MATHJAX_VERSION) || \
	  echo "make install: could not install MathJax $(MATHJAX_VERSION) with npm (needs node and npm):" \
	    "the docs build (mkdocs, tests/test_docs.py) will fail until it is installed" >&2

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
