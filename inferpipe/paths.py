"""Where the repository's files are: the stack definition, the ASL, the local stack's state."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK_FILE = REPO_ROOT / "config" / "stack.json"
STATE_MACHINE_DIR = REPO_ROOT / "state_machine"
#: The local stack's pid, port and log (override with INFERPIPE_STATE_DIR).
STATE_DIR = Path(os.environ.get("INFERPIPE_STATE_DIR") or REPO_ROOT / ".inferpipe")
BUILD_DIR = REPO_ROOT / "build"
