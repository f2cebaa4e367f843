# inferpipe: the team's vocabulary. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv test demo model lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## test: the whole test suite (unit + end to end on the in-process local stack)
test: $(STAMP)
	$(BIN)/python -m pytest

## demo: build the demo model if missing, start the local stack, classify sample images
demo: $(STAMP)
	$(BIN)/inferpipe demo

## model: (re)build the demo model package under build/demo-model
model: $(STAMP)
	$(BIN)/inferpipe model build-demo --out build/demo-model

## lint: terraform fmt -check + checkov on terraform/ and the Dockerfile (checkov in its own .venv-tools/)
lint: $(STAMP)
	tools/lint

clean:
	-$(BIN)/inferpipe local down 2>/dev/null
	rm -rf build .inferpipe .pytest_cache
