# pgfanout developer entry points. `make test` is THE test command: it installs
# what is missing (apt packages, .venv), starts a throwaway local stack
# (PostgreSQL 15, Redis, nx-27017, FalkorDB) and runs the workspace's tests.

SHELL := /bin/bash
CARGO ?= cargo
# Extra arguments for `cargo test`, e.g. make test ARGS='-p pgfanout-decoder'
ARGS ?=

.PHONY: setup test demo lint build bench

setup:
	deploy/local/stack.sh install

test:
	deploy/local/test.sh $(ARGS)

demo:
	deploy/local/demo.sh

# End-to-end decode throughput, pgfanout inspect vs pg_recvlogical (benches/README.md).
# Parameters via the environment, e.g. make bench N=200000 REPEAT=5.
bench:
	N=$(or $(N),1000000) REPEAT=$(or $(REPEAT),3) benches/e2e/decode_vs_recvlogical.sh

lint:
	$(CARGO) fmt --all -- --check && $(CARGO) clippy --workspace --all-targets -- -D warnings

build:
	$(CARGO) build --workspace
