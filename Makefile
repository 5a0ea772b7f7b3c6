# The two commands a newcomer needs are `make demo` and `make test`; the rest are parts.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: provision provision-local test lint crd demo clean

provision:            ## everything the tests need (Python env, Kafka, Redis, etcd, kube-apiserver, ...)
	scripts/provision.sh

provision-local:      ## only what `flowmill run` needs (Python env, Kafka, Redis)
	scripts/provision.sh --local

lint: provision-local
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

crd:                  ## regenerate the committed CRD from the spec models
	$(VENV)/bin/flowmill crd --write

test: provision       ## set up and run the whole test suite on real Kafka, Redis and Kubernetes
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

demo: provision-local ## set up and run the demo pipeline locally
	$(VENV)/bin/flowmill run k8s/examples/streampulse.yaml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
