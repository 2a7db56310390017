# `make demo` and `make test` set up everything they need on a fresh machine:
# Debian packages (when run as root with apt-get), a virtualenv in .venv with the project
# installed in editable mode with all extras, and the offline Fashion-MNIST under data/.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data
FASHION_MNIST := $(DATA)/fashionmnist/FashionMNIST/raw/t10k-labels-idx1-ubyte
DEBIAN_PACKAGES := libmagickwand-dev dataset-fashion-mnist libgl1 libglib2.0-0

.PHONY: install system-deps data demo test test-all lint bench clean

install: $(STAMP)

# Debian packages: ImageMagick for `wand`, OpenCV's system libraries, the offline dataset.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for package in $(DEBIAN_PACKAGES); do \
	    dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	else \
	  echo "not root or no apt-get: make sure these are installed: $(DEBIAN_PACKAGES)"; \
	fi

$(STAMP): setup.py requirements.txt
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST): | $(STAMP)
	$(PY) -m swag.prepare_data --source /usr/share/datasets/fashion-mnist --data_path $(DATA)

demo: install data
	$(PY) experiments/train/demo.py --data_path $(DATA) --dir runs/demo

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check swag ubdl_data experiments tests benchmarks
	$(VENV)/bin/ruff format --check swag ubdl_data experiments tests benchmarks

bench: install data
	$(PY) benchmarks/train_throughput.py --data_path $(DATA)

clean:
	rm -rf runs build *.egg-info
