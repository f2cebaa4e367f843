"""Shared test set-up: dummy AWS credentials so nothing can reach a real account."""

from __future__ import annotations

import os

# Set before any boto3 client exists: tests only ever talk to moto.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_SESSION_TOKEN", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
