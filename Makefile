# lambdatorch: every command a developer or CI runs. Each target installs what it needs, so
# `make demo` and `make test` work from a fresh clone; the second run only redoes what changed.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
# tch builds against the torch package in the venv (torch==2.13.0 from PyPI).
export LIBTORCH_USE_PYTORCH := 1
PY := $(VENV)/bin/python
TORCH_LIB = $(wildcard $(VENV)/lib/python3*/site-packages/torch/lib)
FIXTURES := target/fixtures
EFS := .efs

RUST_SOURCES := Cargo.toml build.rs libtorch-version $(shell find src -name '*.rs' -o -name '*.cpp' 2>/dev/null)
PY_SOURCES := pyproject.toml $(shell find python -type f \( -name '*.py' -o -name '*.pyi' -o -name py.typed \) 2>/dev/null)

.PHONY: help setup wheel develop lambda lambda-zip fixtures test test-rust test-python lint fmt demo clean fuzz soak

help:
	@echo "make demo   - build, lay out a local EFS tree in $(EFS)/ and predict through it"
	@echo "make test   - Rust and Python test suites (installs everything first)"
	@echo "make bench  - bench/report.md and report.png (QUICK=1: smoke run into target/bench-quick/)"
	@echo "make lint   - rustfmt, clippy -D warnings, ruff, stubtest, cfn-lint"
	@echo "make wheel  - dist/lambdatorch-*.whl (no libtorch inside)"
	@echo "make lambda-zip - dist/bootstrap.zip for the provided.al2023 runtime"
	@echo "make fuzz   - each fuzz target for FUZZ_SECONDS (default 60)"
	@echo "make soak   - 5,000 Python API calls and 1,000 native invokes; memory must not grow (SOAK_QUICK=1: fewer)"
	@echo "make setup  - only the Python venv in $(VENV)/ (torch $(shell sed -n 's/^torch==//p' requirements-dev.txt))"

# --- environment ---------------------------------------------------------------------------
setup: $(VENV)/.setup
# cmake and nasm build libjpeg-turbo from source (crate turbojpeg-sys); Debian packages.
$(VENV)/.setup: requirements-dev.txt
	command -v cmake >/dev/null && command -v nasm >/dev/null \
	  || { apt-get update -qq && apt-get install -y -qq cmake nasm; }
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# --- build ---------------------------------------------------------------------------------
wheel: dist/.wheel
dist/.wheel: $(VENV)/.setup $(RUST_SOURCES) $(PY_SOURCES) README.md
	rm -f dist/lambdatorch-*.whl
	maturin build --release --out dist
	touch $@

# The wheel, installed into the venv as users install it.
develop: $(VENV)/.lambdatorch
$(VENV)/.lambdatorch: dist/.wheel
	$(PY) -m pip install --quiet --no-deps --force-reinstall dist/lambdatorch-*.whl
	touch $@

# The native handler: `bootstrap` (crate bootstrap/, links no libtorch) and `lambdatorch-handler`,
# release builds (sharing target/release's dependencies with the wheel and the tests) copied to
# target/lambda/, where packaging, tests and the benchmark take them.
lambda: target/lambda/.built
target/lambda/.built: $(VENV)/.setup $(RUST_SOURCES) libtorch-version bootstrap/Cargo.toml $(wildcard bootstrap/src/*.rs)
	cargo build --release --bins -p lambdatorch-bootstrap -p lambdatorch --features lambdatorch/lambda
	mkdir -p target/lambda
	cp target/release/bootstrap target/release/lambdatorch-handler target/lambda/
	touch $@

lambda-zip: dist/bootstrap.zip
dist/bootstrap.zip: target/lambda/.built scripts/package_lambda.py
	$(PY) scripts/package_lambda.py target/lambda $@

fixtures: $(FIXTURES)/.done
$(FIXTURES)/.done: scripts/make_fixtures.py scripts/text_fixtures.py python/lambdatorch/_manifests.py $(VENV)/.setup
	$(PY) scripts/make_fixtures.py $(FIXTURES)
	touch $@

# --- tests ---------------------------------------------------------------------------------
test: test-rust test-python

# Unit tests, and the integration tests in tests/*.rs on the fixtures, with the native handler's
# feature on (the Python binding's tests are pytest's: tests/python/).
test-rust: $(VENV)/.setup $(FIXTURES)/.done
	LD_LIBRARY_PATH=$(TORCH_LIB) LAMBDATORCH_FIXTURES=$(CURDIR)/$(FIXTURES) \
	  cargo test --release --workspace --features lambdatorch/lambda

test-python: $(VENV)/.lambdatorch $(FIXTURES)/.done dist/bootstrap.zip
	# strace: tests/python/test_cold_start.py counts the file-system calls of a cold start.
	command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace; }
	LAMBDATORCH_FIXTURES=$(CURDIR)/$(FIXTURES) $(PY) -m pytest -q

# --- robustness ----------------------------------------------------------------------------
FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.setup $(FIXTURES)/.done
	LD_LIBRARY_PATH=$(TORCH_LIB) FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

soak: $(VENV)/.lambdatorch $(FIXTURES)/.done target/lambda/.built
	LAMBDATORCH_FIXTURES=$(CURDIR)/$(FIXTURES) $(PY) scripts/soak.py $(if $(SOAK_QUICK),--quick)

# --- lint ----------------------------------------------------------------------------------
lint: $(VENV)/.lambdatorch
	cargo fmt --check
	cargo fmt --check --manifest-path fuzz/Cargo.toml
	LD_LIBRARY_PATH=$(TORCH_LIB) cargo clippy --release --all-targets --all-features -- -D warnings
	ruff check python tests scripts demo deploy bench
	ruff format --check python tests scripts demo deploy bench
	$(PY) -m mypy.stubtest lambdatorch --ignore-missing-stub --allowlist stubtest-allowlist.txt
	cfn-lint deploy/template.yaml

fmt:
	cargo fmt
	ruff format python tests scripts demo deploy bench
	ruff check --fix python tests scripts demo deploy bench

# --- benchmark -----------------------------------------------------------------------------
# The full run writes bench/report.md, report.png and results.json, to be committed; QUICK=1 is the
# smoke run CI executes (minutes), written to target/bench-quick/ so it never replaces them.
.PHONY: bench
BENCH_OUT = $(if $(QUICK),target/bench-quick,bench)
bench: $(VENV)/.lambdatorch target/lambda/.built $(FIXTURES)/.done
	command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace; }
	# The EFS stand-in (bench/efs.py), where the kernel offers FUSE: libfuse3 and fusermount3
	# (Debian's fuse3), mfusepy (PyPI). Without /dev/fuse the bench skips it and says so.
	test ! -e /dev/fuse || command -v fusermount3 >/dev/null \
	  || { apt-get update -qq && apt-get install -y -qq fuse3; }
	test ! -e /dev/fuse || $(PY) -c "import mfusepy" 2>/dev/null \
	  || $(PY) -m pip install --quiet "mfusepy==3.1.1"
	$(PY) -m bench $(if $(QUICK),--quick) --out $(BENCH_OUT)

# --- demo ----------------------------------------------------------------------------------
demo: $(VENV)/.lambdatorch target/lambda/.built
	$(PY) demo/build_efs.py $(EFS)
	$(PY) demo/run.py $(EFS)
	$(PY) demo/handlers.py $(EFS)

clean:
	rm -rf target dist $(EFS)
