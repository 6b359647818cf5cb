# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?=
OUT    ?= demo_out

.PHONY: install demo test test-fast bench train-default train-light clean browser-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,scale]'
	# The child detector's face finder (MTCNN weights ship in the wheel). --no-deps: its metadata pins torch<2.3,
	# numpy<2 and pillow<10.3, none of which it needs; what it imports (torch, torchvision, requests) is ours.
	$(PY) -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

install: $(STAMP)

# Main job. Without DATA: index the shipped sample images, run queries, write $(OUT)/index.html.
# With DATA=path/to/course-folder: train -> evaluate -> report on the user's course data.
demo: $(STAMP)
	$(PY) -m retrieval.demo --out $(OUT) $(if $(DATA),--data $(DATA),)

# Whole suite, slow (real models) and browser tests included.
test: $(STAMP) browser-deps
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

# Headless Chromium + chromedriver from Debian for the browser test (no browser download).
browser-deps:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	    echo "browser-deps: could not install chromium (not root?); browser tests will skip"; }

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Reproduces the shipped default model from the course data.
train-default: $(STAMP)
	$(PY) -m retrieval.cli train --data $(or $(DATA),../shared/data/course-train) --out retrieval/default_model

train-light: $(STAMP)
	$(PY) -m retrieval.cli train --data $(or $(DATA),../shared/data/course-train) --out retrieval/light_model \
	  --image-encoder efficientnet-lite0 --text-encoder all-MiniLM-L6-v2

clean:
	rm -rf $(OUT) .pytest_cache
