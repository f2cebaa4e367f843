# inferpipe: the team's vocabulary. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help venv test demo model shapes-model bench lint format typecheck check load screenshot clean image push deploy

## help: this list (each target's ## line)
help:
	@awk '/^## / { sub(/^## /, ""); i = index($$0, ": "); printf "  make %-13s %s\n", substr($$0, 1, i - 1), substr($$0, i + 2) }' $(MAKEFILE_LIST)

## venv: create .venv and install the pinned dependencies (every other target does this itself)
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## test: the whole test suite (unit + end to end on the in-process local stack)
test: $(STAMP)
	$(BIN)/python -m pytest

## demo: package the pretrained default model if missing, start the local stack, classify real photos
demo: $(STAMP)
	$(BIN)/inferpipe demo

## bench: inference / preprocess / cold start / pipeline benchmark (several minutes): table, bench/results.json, bench/chart.png
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	test -f build/demo-model/manifest.json || $(BIN)/inferpipe model build-demo --out build/demo-model
	OMP_NUM_THREADS=2 $(BIN)/python -m bench.run

## model: (re)build the default model package (pretrained EfficientNet-Lite0, offline) under build/models/efficientnet_lite0
model: $(STAMP)
	rm -rf build/models/efficientnet_lite0
	$(BIN)/inferpipe model import efficientnet_lite0 --pretrained --out build/models/efficientnet_lite0

## shapes-model: (re)build the tiny shapes model the tests and load runs use, under build/demo-model
shapes-model: $(STAMP)
	$(BIN)/inferpipe model build-demo --out build/demo-model

## lint: ruff check, ruff format --check, mypy, radon (nothing graded D or worse), terraform fmt -check, checkov
lint: $(STAMP)
	tools/lint

## format: rewrite Python (ruff format, ruff check --fix) and Terraform (terraform fmt) in canonical form
format: $(STAMP)
	tools/lint --fix

## typecheck: mypy on functions/, inferpipe/, tests/, scripts/ and bench/ (the settings are in pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy

## check: everything CI runs (.ci/run): the tests, then the lint
check: test lint

# ---- Deploy to AWS (needs Docker with buildx, Terraform >= 1.9 and the AWS CLI; see README) ----
TAG      ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo latest)
IMAGE    ?= inferpipe:$(TAG)
TFVARS   ?= terraform/examples/terraform.tfvars.example
REPOSITORY ?=
need = @command -v $(1) >/dev/null 2>&1 || { echo "make $@: '$(1)' is not installed; $(2)" >&2; exit 1; }

## image: build the Lambda container image for linux/amd64 (IMAGE=inferpipe:<git sha>)
image:
	$(call need,docker,install Docker with buildx (https://docs.docker.com/get-docker/))
	@docker buildx version >/dev/null 2>&1 || { echo "make $@: docker buildx is not available; install the buildx plugin (https://docs.docker.com/build/install-buildx/)" >&2; exit 1; }
	docker buildx build --platform linux/amd64 --provenance=false --load -t $(IMAGE) .

## push: push IMAGE to ECR: the repository `make deploy` created (terraform output ecr_repository_url), or REPOSITORY=<url>
push: image
	$(call need,aws,install the AWS CLI v2 and configure a profile)
	@repo=$(REPOSITORY); \
	  if [ -z "$$repo" ]; then \
	    command -v terraform >/dev/null 2>&1 || { echo "make push: 'terraform' is not installed; install Terraform >= 1.9 (https://developer.hashicorp.com/terraform/install), or pass REPOSITORY=<ECR repository URL>" >&2; exit 1; }; \
	    repo=$$(terraform -chdir=terraform output -raw ecr_repository_url 2>/dev/null); \
	  fi; \
	  case "$$repo" in *.dkr.ecr.*) ;; *) echo "make push: no ECR repository: run 'make deploy' once (it creates one), or pass REPOSITORY=<ECR repository URL> for one you created" >&2; exit 1;; esac; \
	  registry=$${repo%%/*}; region=$$(echo $$registry | cut -d. -f4); \
	  aws ecr get-login-password --region $$region | docker login --username AWS --password-stdin $$registry && \
	  docker tag $(IMAGE) $$repo:$(TAG) && docker push $$repo:$(TAG) && \
	  echo "pushed $$repo:$(TAG)"

## deploy: terraform apply with the pushed image; the first run creates only the ECR repository (TFVARS=..., REPOSITORY=<url> to use your own)
# Without REPOSITORY, Terraform owns the repository: every apply here passes create_ecr_repository=true
# (its default is false, for deployments whose repository exists already).
deploy:
	$(call need,terraform,install Terraform >= 1.9 (https://developer.hashicorp.com/terraform/install))
	terraform -chdir=terraform init -input=false
	@if [ -n "$(REPOSITORY)" ]; then \
	    terraform -chdir=terraform apply -var-file=$(abspath $(TFVARS)) -var create_ecr_repository=false -var image_uri=$(REPOSITORY):$(TAG); \
	  else \
	    repo=$$(terraform -chdir=terraform output -raw ecr_repository_url 2>/dev/null); \
	    case "$$repo" in \
	      *.dkr.ecr.*) terraform -chdir=terraform apply -var-file=$(abspath $(TFVARS)) -var create_ecr_repository=true -var image_uri=$$repo:$(TAG);; \
	      *) echo "first apply: creating the ECR repository only; then run 'make push deploy'"; \
	         terraform -chdir=terraform apply -var-file=$(abspath $(TFVARS)) -var create_ecr_repository=true -var image_tag=$(TAG) -target=aws_ecr_repository.this;; \
	    esac; \
	  fi

## load: 1000 uploads in bursts with ~10% faults, ~5% bad inputs, ~5% overwrites and killed environments; replay, then reconcile
load: $(STAMP)
	$(BIN)/python scripts/load.py --images 1000

## screenshot: the console's screenshots in docs/ (headless Chromium: apt-get install chromium-headless-shell)
screenshot: $(STAMP)
	$(BIN)/python scripts/console_screenshot.py

## clean: stop the local stack; remove build/, the stack's saved state (.inferpipe/) and pytest's cache
clean:
	-$(BIN)/inferpipe local down 2>/dev/null
	rm -rf build .inferpipe .pytest_cache
