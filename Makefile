# Myelin: the two commands a fresh machine needs are `make run` and `make test`.
CARGO ?= cargo
RUST_LOG ?= info
export RUST_LOG

.PHONY: setup build run test fmt lint check bench-storage clean-cache interop-setup sdk-test fuzz-short package-test

## Install build prerequisites and the cached RocksDB archive.
setup:
	@scripts/setup.sh

## Build every crate and the `myelin` binary (dev profile).
build: setup
	$(CARGO) build --workspace --bins

## Set up, build and run a server on the defaults (./myelin-data, :8008, :8448).
run: build
	./target/debug/myelin serve $(if $(CONFIG),--config $(CONFIG),)

fmt:
	$(CARGO) fmt --all

## Formatting and lints, as CI runs them.
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Install the third-party software interop tests drive (matrix-nio, Synapse, mautrix venvs; matrix-appservice-bridge from npm).
interop-setup:
	@tests/interop/setup.sh

## Everything CI runs: format check, clippy -D warnings, all tests.
test: lint interop-setup
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "cargo-nextest not found; using cargo test"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(MAKE) package-test PACKAGE_BIN=target/debug/myelin
	$(MAKE) sdk-test
	$(MAKE) fuzz-short

## The Debian package from a release build (scripts/build-deb.sh): contents, the systemd
## unit (systemd-analyze), the example config serving, the Grafana dashboard's metric
## names, an install into a temp root (tests/packaging.sh; no systemd needed).
## `make test` passes PACKAGE_BIN=target/debug/myelin: the checks are of the packaging,
## not of the compiler profile, and a release build would add ~10 min to CI.
package-test: setup
	@missing=""; for p in dpkg-dev fakeroot binutils systemd strace; do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "package-test: installing$$missing"; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if [ -z "$(PACKAGE_BIN)" ]; then $(CARGO) build --release --bin myelin; fi
	tests/packaging.sh $(or $(PACKAGE_BIN),target/release/myelin)

## `cargo fuzz` (nightly toolchain, its own target dir under fuzz/): a few seconds of each
## target; `RUNS=10000000 scripts/fuzz-cargo.sh` is the long mode (FUZZING.md).
fuzz-short: setup
	scripts/fuzz-cargo.sh

## Element X's engine (matrix-sdk, matrix-sdk-ui) against the built `myelin` binary: a
## crate of its own (sdk-tests/), so the default build does not compile the SDK.
sdk-test: setup interop-setup
	$(CARGO) build --bins
	cd sdk-tests && $(CARGO) fmt -- --check && $(CARGO) clippy --all-targets -- -D warnings && $(CARGO) test --no-fail-fast

## Storage group-commit benchmark (release build of everything: slow the first time).
bench-storage: setup
	$(CARGO) bench --bench storage

## Forget the prebuilt RocksDB (the next build compiles it again, ~20 min).
clean-cache:
	rm -rf .cache "$${XDG_CACHE_HOME:-$$HOME/.cache}/myelin"
