# Quick start:  make demo   (set up, then train the paper's GoogLeNet on Fashion-MNIST on this machine)
#               make test   (set up, then lint and run the whole test suite; what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup setup-test data demo test bench-cpu clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# torch 2.14.1 / torchvision 0.29.1 are what this project is tested with (pip may serve them locally).
# The demo needs only the package; the test extras (onnxruntime, grad-cam with OpenCV, scikit-learn,
# selenium...) come with the first `make test`, so they do not delay the first training.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's package when we may install it (root, apt); otherwise say what to do.
data:
	@if [ -n "$$GOOGLENET_DATA" ] || [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) && echo "installed dataset-fashion-mnist"; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or set GOOGLENET_DATA to a folder with its idx files"; fi

# The `demo` recipe: googlenet_bn on Fashion-MNIST at its own 28 px, 2 epochs (a few minutes on 2 CPU cores);
# prints the test accuracy. bf16 autocast where the CPU has bf16 instructions, float32 elsewhere. Each run
# replaces the last one in runs/demo.
NATIVE_BF16 = $$($(BIN)/python -c 'from googlenet.devices import cpu_has_native_bf16 as n; print("--bf16" if n() else "--no-bf16")')
demo: setup data
	$(BIN)/googlenet train --config demo $(NATIVE_BF16) --out runs/demo --overwrite

test: setup-test data
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/pytest

bench-cpu: setup-test
	$(BIN)/python bench/cpu_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
