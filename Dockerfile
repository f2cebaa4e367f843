# syntax=docker/dockerfile:1.7
# One image, three Lambda functions: the handler is chosen per function by CMD
# (Terraform sets image_config.command to config/stack.json's "command" for each function).
#
#   docker build -t inferpipe .
#   docker run -p 9000:8080 inferpipe functions.inference.handler.lambda_handler   # with the RIE

#checkov:skip=CKV_DOCKER_7:Both stages are FROM ${PYTHON_IMAGE}, pinned just below to an exact version tag; checkov does not resolve build ARGs
ARG PYTHON_IMAGE=public.ecr.aws/docker/library/python:3.11.7-slim-bookworm

# ---- build stage: compilers and pip caches stay here ---------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /build
COPY constraints.txt pyproject.toml ./
# Runtime dependencies only (no moto/pytest) into a relocatable prefix: pyproject.toml's
# [project].dependencies as written there, plus the Lambda runtime interface client the image's
# ENTRYPOINT runs, each pinned by constraints.txt.
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt \
 && python -m pip install --no-cache-dir --disable-pip-version-check --target /opt/deps \
        -c constraints.txt -r requirements.txt awslambdaric \
 && find /opt/deps -name "__pycache__" -type d -prune -exec rm -rf {} + \
 && rm -rf /opt/deps/bin

# ---- runtime stage ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# libgomp for MXNet's OpenMP build; nothing else from apt.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
ENV LAMBDA_TASK_ROOT=/var/task \
    PYTHONPATH=/var/task:/opt/deps \
    PYTHONDONTWRITEBYTECODE=1 \
    MXNET_CUDNN_AUTOTUNE_DEFAULT=0
COPY --from=build /opt/deps /opt/deps
COPY functions/ /var/task/functions/
# The rules the functions share with Terraform (sinks, settings defaults): functions/common/stack.py.
COPY config/stack.json /var/task/config/stack.json
# Lambda runs the image as a non-root user anyway; running as one here keeps local runs honest.
RUN useradd --system --uid 10001 --no-create-home lambda
USER 10001
WORKDIR /var/task
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/python", "-m", "awslambdaric"]
CMD ["functions.inference.handler.lambda_handler"]
