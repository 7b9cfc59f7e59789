PY ?= python
FUZZ_ARGS ?=

.PHONY: build build-deps test lint fmt bench fuzz sanitize clean

# pip's build isolation is bypassed (fast rebuilds), so the build requirements go in first.
build-deps:
	$(PY) tools/install_build_deps.py

build: build-deps
	$(PY) -m pip install -q --no-build-isolation -e .

test:
	$(PY) -m pytest

lint:
	ruff check src tests benchmarks

fmt:
	ruff format src tests benchmarks

bench:
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only --benchmark-json=.benchmarks/latest.json
	$(PY) benchmarks/report.py .benchmarks/latest.json

# Coverage-guided fuzzing of the decoder, C code included (needs clang; see .ci/fuzz).
# Runs until stopped; e.g. make fuzz FUZZ_ARGS=-runs=100000 for a bounded run.
fuzz: build-deps
	mkdir -p .fuzz-corpus
	PYTHON=$(PY) bash .ci/fuzz $(FUZZ_ARGS) .fuzz-corpus

sanitize: build-deps
	PYTHON=$(PY) bash .ci/sanitize

clean:
	rm -rf build src/kstore/_core.c src/kstore/*.so
