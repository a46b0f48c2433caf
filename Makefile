# Two commands on a fresh machine:
#   make demo   -> runs the main job on the bundled default
#   make test   -> runs the whole test suite
# Both create (or reuse) a local virtualenv in $(VENV). torch is installed FIRST so that CPU-only
# machines get the CPU wheel; CUDA users override it, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.facemogle-installed

.PHONY: venv test demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q -p no:cacheprovider

demo: venv
	$(VENV)/bin/facemogle mask show src/facemogle/assets/masks/example.png -o out/demo_mask.png
	@echo "wrote out/demo_mask.png"

clean:
	rm -rf $(VENV) out
