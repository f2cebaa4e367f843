# inferpipe: the team's vocabulary. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv test demo model shapes-model bench lint load screenshot clean image push deploy

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

## lint: terraform fmt -check + checkov on terraform/ and the Dockerfile (checkov in its own .venv-tools/)
lint: $(STAMP)
	tools/lint

# ---- Deploy to AWS (needs Docker with buildx, Terraform >= 1.5 and the AWS CLI; see README) ----
TAG      ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo latest)
IMAGE    ?= inferpipe:$(TAG)
TFVARS   ?= terraform/examples/terraform.tfvars.example
need = @command -v $(1) >/dev/null 2>&1 || { echo "make $@: '$(1)' is not installed; $(2)" >&2; exit 1; }

## image: build the Lambda container image for linux/amd64 (IMAGE=inferpipe:<git sha>)
image:
	$(call need,docker,install Docker with buildx (https://docs.docker.com/get-docker/))
	@docker buildx version >/dev/null 2>&1 || { echo "make $@: docker buildx is not available; install the buildx plugin (https://docs.docker.com/build/install-buildx/)" >&2; exit 1; }
	docker buildx build --platform linux/amd64 --provenance=false --load -t $(IMAGE) .

## push: push IMAGE to the ECR repository of the deployment (terraform output ecr_repository_url)
push: image
	$(call need,aws,install the AWS CLI v2 and configure a profile)
	$(call need,terraform,install Terraform >= 1.5 (https://developer.hashicorp.com/terraform/install))
	@repo=$$(terraform -chdir=terraform output -raw ecr_repository_url) || { echo "make push: no ECR repository yet: run 'make deploy' once (it creates it), or terraform apply -target=aws_ecr_repository.this" >&2; exit 1; }; \
	  registry=$${repo%%/*}; region=$$(echo $$registry | cut -d. -f4); \
	  aws ecr get-login-password --region $$region | docker login --username AWS --password-stdin $$registry && \
	  docker tag $(IMAGE) $$repo:$(TAG) && docker push $$repo:$(TAG) && \
	  echo "pushed $$repo:$(TAG)"

## deploy: terraform apply with the pushed image (TFVARS=terraform/examples/terraform.tfvars)
deploy:
	$(call need,terraform,install Terraform >= 1.5 (https://developer.hashicorp.com/terraform/install))
	terraform -chdir=terraform init -input=false
	@repo=$$(terraform -chdir=terraform output -raw ecr_repository_url 2>/dev/null); \
	  if [ -z "$$repo" ]; then echo "first apply: creating the ECR repository; then run 'make push deploy'"; \
	    terraform -chdir=terraform apply -var-file=$(abspath $(TFVARS)) -var image_tag=$(TAG) -target=aws_ecr_repository.this; \
	  else terraform -chdir=terraform apply -var-file=$(abspath $(TFVARS)) -var image_uri=$$repo:$(TAG); fi

## load: 1000 uploads in bursts with ~10% faults, ~5% bad inputs, ~5% overwrites and killed environments; replay, then reconcile
load: $(STAMP)
	$(BIN)/python scripts/load.py --images 1000

## screenshot: the console's screenshots in docs/ (headless Chromium: apt-get install chromium-headless-shell)
screenshot: $(STAMP)
	$(BIN)/python scripts/console_screenshot.py

clean:
	-$(BIN)/inferpipe local down 2>/dev/null
	rm -rf build .inferpipe .pytest_cache
