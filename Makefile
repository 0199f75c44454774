# Developer targets. Everything a fresh machine needs is done by scripts/setup (called by the
# test and demo scripts); `make` is a convenience on top.
VENV ?= .venv
PY := $(VENV)/bin/python

# Every .proto we author (the shim's, and the CRI subset the e2e tests speak); generated
# *_pb2.py / *_pb2.pyi sit beside each one and are committed.
PROTOS := $(shell find pyshim tests/e2e/cri -name '*.proto' | sort)

.PHONY: protos test demo bench lint

protos:
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. $(PROTOS)

test:
	./scripts/test

lint:
	$(VENV)/bin/ruff check pyshim tests bench
	$(VENV)/bin/mypy

bench:
	$(PY) -m bench.ttrpc_roundtrip
