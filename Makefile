# pgfanout developer entry points. `make test` is THE test command: it installs
# what is missing (apt packages, .venv, Maven jars), starts a throwaway local
# stack (PostgreSQL 15, Redis, nx-27017, FalkorDB, Cassandra, Neo4j), runs the
# workspace's tests and fuzzes the decoder for FUZZ_SECONDS.

SHELL := /bin/bash
CARGO ?= cargo
# Extra arguments for `cargo test`, e.g. make test ARGS='-p pgoutput'
ARGS ?=
# How long `make fuzz` runs the decoder fuzz target, in seconds.
FUZZ_SECONDS ?= 60

.PHONY: setup test demo lint build fuzz bench bench-pipeline bench-latency bench-archive bench-snapshot bench-verify

setup:
	deploy/local/stack.sh install

# The workspace's tests against the local stack, then a bounded fuzz run of
# the decoder (skipped when ARGS narrows the tests).
test:
	deploy/local/test.sh $(ARGS)
	$(if $(ARGS),,CARGO="$(CARGO)" deploy/local/fuzz.sh $(FUZZ_SECONDS))

demo:
	deploy/local/demo.sh

# End-to-end decode throughput, pgfanout inspect vs pg_recvlogical (benches/README.md).
# Parameters via the environment, e.g. make bench N=200000 REPEAT=5.
bench:
	N=$(or $(N),1000000) REPEAT=$(or $(REPEAT),3) benches/e2e/decode_vs_recvlogical.sh

# The whole pipeline (discarding sink) against pg_recvlogical on copies of one slot
# (benches/README.md). E.g. make bench-pipeline N=200000 REPEAT=5, or CALLGRIND=1 N=100000
# for instructions per change.
bench-pipeline:
	N=$(or $(N),1000000) REPEAT=$(or $(REPEAT),3) benches/e2e/pipeline_vs_recvlogical.sh

# Commit-to-applied latency into Redis at a steady rate (benches/README.md).
bench-latency:
	benches/e2e/latency.sh

# The pipeline with the change archive off vs on (copies of one slot), and replay
# throughput into the discarding sink and Redis (benches/README.md). E.g.
# make bench-archive N=200000 REPEAT=5, or CALLGRIND=1 N=100000 for instructions per change.
bench-archive:
	N=$(or $(N),500000) REPEAT=$(or $(REPEAT),3) benches/e2e/archive_on_off.sh

# The initial snapshot of a table into the discarding sink and Redis, next to COPY of
# the same table (benches/README.md). E.g. make bench-snapshot N=200000.
bench-snapshot:
	N=$(or $(N),1000000) benches/e2e/snapshot_vs_copy.sh

# `pgfanout verify` of a table in Redis, next to COPY of the same table
# (benches/README.md). E.g. make bench-verify N=200000.
bench-verify:
	N=$(or $(N),1000000) benches/e2e/verify_redis.sh

lint:
	$(CARGO) fmt --all -- --check && $(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

build:
	$(CARGO) build --workspace

# Fuzz the pgoutput decoder for FUZZ_SECONDS on the stable toolchain; fails on any crash.
fuzz:
	CARGO="$(CARGO)" deploy/local/fuzz.sh $(FUZZ_SECONDS)
