# The two commands of the README are `make demo` (the main job) and `make test`.
PY := .venv/bin/python

.PHONY: bootstrap demo test bench lint build clean

bootstrap:
	@scripts/bootstrap

build: bootstrap
	$(PY) setup.py -q build_ext --inplace

demo: bootstrap
	scripts/demo

test: bootstrap
	$(PY) -m pytest -q

bench: bootstrap
	$(PY) benchmarks/scan_throughput.py
	$(PY) -m pytest benchmarks -q --benchmark-only

lint: bootstrap
	.venv/bin/ruff check engine tests benchmarks setup.py
	.venv/bin/ruff format --check engine tests benchmarks setup.py

clean:
	rm -rf build engine/*.so ext/*.c *.egg-info
