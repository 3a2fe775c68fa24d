# Two entry points for a fresh machine:  `make book` (the main job) and `make test`.
# Each creates .venv and installs what is missing first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
PROFILE ?= cpu
RUN    ?= runs/$(PROFILE)

.PHONY: venv test test-fast lint format strip book pipeline compare clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,coco,voc]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The developer loop: every test not marked slow (no notebook execution, no multi-process runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# What CI checks before the tests: lint, formatting, and chapters committed without outputs.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/nbstripout --keep-id --verify notebooks/*.ipynb

# Fix what lint can: sort imports, modernise, format the code, strip the chapters' outputs.
format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

strip: $(STAMP)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

# Every stage of one profile; the profile's benchmark is generated into data/<generator>-<profile> first.
pipeline: $(STAMP)
	$(VENV)/bin/esol pipeline --config $(PROFILE) --run $(RUN)

# The main job: execute every notebook with papermill on the profile's benchmark, then build the book.
book: $(STAMP)
	$(VENV)/bin/esol book --profile $(PROFILE)

# esol beside grad-cam, torchvision, a dense random walk and a one-process CRF (book/results/compare.json).
compare: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/compare.py

clean:
	rm -rf runs _build build
