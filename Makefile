# The two commands a newcomer needs are `make demo` and `make test`; the rest are parts.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Test processes: the node tests on one, the other modules shared by the rest. Most of the
# suite waits on Kafka, pods and the HPA rather than computing, hence more workers than cores.
TEST_WORKERS ?= 3
# Lint caches outside the clone, so a fresh clone (CI) reuses them.
export MYPY_CACHE_DIR ?= $(HOME)/.cache/flowmill/mypy
export RUFF_CACHE_DIR ?= $(HOME)/.cache/flowmill/ruff

.PHONY: provision provision-local test lint crd demo cluster cluster-down clean bench bench-quick

provision:            ## everything the tests need (Python env, Kafka, Redis, etcd, kube-apiserver, ...)
	scripts/provision.sh

provision-local:      ## only what `flowmill run` needs (Python env, Kafka, Redis)
	scripts/provision.sh --local

lint: provision-local ## ruff, the import contracts (import-linter) and the types (mypy)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

crd:                  ## regenerate the committed CRD from the spec models
	$(VENV)/bin/flowmill crd --write

test: provision       ## set up and run the whole test suite on real Kafka, Redis and Kubernetes
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	scripts/cluster.sh test -n $(TEST_WORKERS) --dist loadgroup --durations=40

demo: provision-local ## set up and run the demo pipeline locally
	$(VENV)/bin/flowmill run k8s/examples/streampulse.yaml

bench: provision-local ## every benchmark in one run, one table (benchmarks/results/bench.md, .json)
	scripts/provision.sh bench
	scripts/provision.sh kube
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

bench-quick: provision-local ## the same with tiny sizes and one round: checks it works, figures mean nothing
	scripts/provision.sh bench
	scripts/provision.sh kube
	$(PY) benchmarks/bench.py --quick $(BENCH_ARGS)

cluster: provision    ## start the single-node Kubernetes cluster; prints its KUBECONFIG
	scripts/cluster.sh up

cluster-down:         ## tear the cluster down and check the host is as it was
	scripts/cluster.sh down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
