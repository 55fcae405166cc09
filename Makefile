# The two commands a user needs: `make demo` and `make test`. Each creates .venv when missing.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test test-fast test-bench bench faults report ui schema clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m platform.run studies/ablate_confounder.yaml --resume-if-any
	$(PY) -m platform.report studies/ablate_confounder.yaml

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -ra --timeout=900 -m "not bench" tests

# The Ray-study benchmarks at quick size (about 6 minutes on 2 cores); kept out of `make test`.
test-bench: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -ra --timeout=900 -m bench tests

test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) -m benchmarks.run

faults: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m benchmarks.faults

report: $(STAMP)
	$(PY) -m platform.report studies/ablate_confounder.yaml

ui: $(STAMP)
	$(PY) -m platform.ui

schema: $(STAMP)
	$(PY) -m platform.schema > studies/study.schema.json

clean:
	rm -rf outputs
