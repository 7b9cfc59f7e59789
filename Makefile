PY ?= python

.PHONY: build test lint fmt bench fuzz sanitize clean

build:
	$(PY) -m pip install --no-build-isolation -e .

test:
	$(PY) -m pytest

lint:
	ruff check src tests benchmarks

fmt:
	ruff format src tests benchmarks

bench:
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only --benchmark-json=.benchmarks/latest.json
	$(PY) benchmarks/report.py .benchmarks/latest.json

fuzz:
	mkdir -p .fuzz-corpus && $(PY) tests/fuzz/fuzz_decoder.py -max_len=4096 .fuzz-corpus

sanitize:
	PYTHON=$(PY) bash .ci/sanitize

clean:
	rm -rf build src/kstore/_core.c src/kstore/*.so
