# Two commands do the whole set-up on a fresh machine:
#   make demo   - create .venv, install everything, run the main job on the built-in model
#   make test   - create .venv, install everything, lint, type-check and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out

# Debian packages with real photographs (training and evaluation; see mor_edge/photos.py).
PHOTO_PACKAGES := mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test lint clean photos runtime-only

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: a looser spec can pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

install: $(BIN)/.installed

photos:
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q --no-install-recommends $(PHOTO_PACKAGES)

demo: install
	mkdir -p $(OUT)
	$(BIN)/mor-edge export --target onnx --out $(OUT)/tiny-onnx-static-fp32 --force
	$(BIN)/python -c "from skimage import data; from PIL import Image; Image.fromarray(data.chelsea()[40:296:4, 150:406:4]).save('$(OUT)/demo_lr.png')"
	$(BIN)/mor-edge upscale $(OUT)/demo_lr.png $(OUT)/demo_sr.png --artifact $(OUT)/tiny-onnx-static-fp32
	$(BIN)/python -c "from PIL import Image; im = Image.open('$(OUT)/demo_lr.png'); im.resize((4 * im.width, 4 * im.height), Image.Resampling.BICUBIC).save('$(OUT)/demo_bicubic.png')"
	@echo "compare $(OUT)/demo_sr.png with $(OUT)/demo_bicubic.png"

lint: install
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --check --no-cache .
	$(BIN)/mypy

SUITE_ARTIFACT := build/suite-artifact
RUNTIME_VENV := build/runtime-venv

test: lint
	# two workers on one core each (tests/conftest.py), a test file per worker (module fixtures export once)
	rm -rf $(SUITE_ARTIFACT)
	MOR_EDGE_KEEP_ARTIFACT=$(SUITE_ARTIFACT) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile
	$(MAKE) runtime-only

# The wheel in a fresh venv with only the ONNX Runtime extra: no PyTorch, and it runs the
# artifact the test suite exported to the same pixels as the full install.
runtime-only: install
	rm -rf dist $(RUNTIME_VENV) build/rt
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q "$$(ls dist/mor_edge-*.whl)[onnx]"
	$(RUNTIME_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit('torch is installed' if u.find_spec('torch') else 0)"
	mkdir -p build/rt
	$(BIN)/python -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()[100:196, 180:276]).save('build/rt/in.png')"
	cd build/rt && ../runtime-venv/bin/mor-edge info ../suite-artifact
	cd build/rt && ../runtime-venv/bin/mor-edge upscale in.png runtime.png --artifact ../suite-artifact
	$(BIN)/mor-edge upscale build/rt/in.png build/rt/full.png --artifact $(SUITE_ARTIFACT)
	cmp build/rt/runtime.png build/rt/full.png && echo "runtime-only install: same pixels as the full install"
	du -sh $(RUNTIME_VENV) $(VENV)

clean:
	rm -rf $(VENV) $(OUT) build dist *.egg-info
