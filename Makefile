# Two entry points for a fresh machine:  `make book` (the main job) and `make test`.
# Each creates .venv and installs what is missing first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
PROFILE ?= cpu
RUN    ?= runs/$(PROFILE)
DATA   ?= data/synth-$(PROFILE)

.PHONY: venv test book pipeline synth clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,coco,voc]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

synth: $(STAMP)
	$(VENV)/bin/esol data synth --out $(DATA) --profile $(PROFILE)

pipeline: synth
	$(VENV)/bin/esol pipeline --config $(PROFILE) --data-root $(DATA) --run $(RUN)

# The main job: execute every notebook with papermill on the generated benchmark, then build the book.
book: $(STAMP)
	$(VENV)/bin/esol book --profile $(PROFILE)

clean:
	rm -rf runs _build build
