# Quick start:  make demo   (set up, then train the paper's GoogLeNet on Fashion-MNIST on this machine)
#               make test   (set up, then lint and run the whole test suite; what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup setup-test data demo test bench-cpu clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# torch 2.14.1 / torchvision 0.29.1 are what this project is tested with.
# The demo needs only the package; the test extras (onnxruntime, grad-cam with OpenCV, scikit-learn,
# selenium...) come with the first `make test`, so they do not delay the first training.
# uv installs torch and its 4 GB of libraries in under a minute where pip takes about 2 minutes (2-core
# Xeon, 2026-12-03), bytecode compiled as pip does (else every start recompiles torch's modules wherever
# PYTHONDONTWRITEBYTECODE is set: 16-18 s instead of 4-6 for `googlenet --help`). pip is the fallback
# where uv cannot be had or fails, for example behind an index that only pip's configuration names.
INSTALL = install() { { [ -x $(BIN)/uv ] && \
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python "$$@"; } || $(BIN)/pip install -q "$$@"; }; install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv || echo "uv unavailable: installing with pip (a few minutes)"
	$(INSTALL) torch==2.14.1 torchvision==0.29.1 || $(INSTALL) torch torchvision
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(INSTALL) -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's package when we may install it (root, apt); otherwise say what to do.
data:
	@if [ -n "$$GOOGLENET_DATA" ] || [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) && echo "installed dataset-fashion-mnist"; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or set GOOGLENET_DATA to a folder with its idx files"; fi

# The `demo` recipe: googlenet_bn on Fashion-MNIST at its own 28 px, 2 epochs over 48,000 images, float32
# (about 4 minutes on 2 CPU cores); prints the test accuracy. Each run replaces the last one in runs/demo.
demo: setup data
	$(BIN)/googlenet train --config demo --out runs/demo --overwrite

test: setup-test data
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/pytest

bench-cpu: setup-test
	$(BIN)/python bench/cpu_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
