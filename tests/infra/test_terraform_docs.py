"""terraform/README.md documents every variable and output as variables.tf and outputs.tf declare them."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import hcl2

REPO_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("terraform_docs", REPO_ROOT / "tools" / "terraform_docs.py")
assert _spec is not None and _spec.loader is not None
terraform_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(terraform_docs)


def _names(path: Path, kind: str) -> list[str]:
    with path.open(encoding="utf-8") as handle:
        return [name.strip('"') for block in hcl2.load(handle).get(kind, []) for name in block]


def test_the_readme_tables_are_what_the_terraform_files_declare() -> None:
    readme = terraform_docs.README.read_text(encoding="utf-8")
    assert terraform_docs.render(readme) == readme, "stale: run .venv/bin/python tools/terraform_docs.py"


def test_every_variable_and_output_has_a_row_with_its_description() -> None:
    readme = terraform_docs.README.read_text(encoding="utf-8")
    variables = _names(terraform_docs.TERRAFORM_DIR / "variables.tf", "variable")
    outputs = _names(terraform_docs.TERRAFORM_DIR / "outputs.tf", "output")
    assert len(variables) > 30 and len(outputs) > 10
    rows = {line.split("|")[1].strip().strip("`") for line in readme.splitlines() if line.startswith("| `")}
    assert set(variables) | set(outputs) <= rows
    assert "| `image_tag` | `string` | `null` | Tag of the image" in readme


def test_a_new_variable_makes_the_readme_stale(tmp_path: Path) -> None:
    shutil.copy(terraform_docs.TERRAFORM_DIR / "variables.tf", tmp_path / "variables.tf")
    shutil.copy(terraform_docs.TERRAFORM_DIR / "outputs.tf", tmp_path / "outputs.tf")
    with (tmp_path / "variables.tf").open("a", encoding="utf-8") as handle:
        handle.write(
            '\nvariable "shiny" {\n  description = "A new knob."\n  type        = number\n  default     = 3\n}\n'
        )
    readme = terraform_docs.README.read_text(encoding="utf-8")
    fresh = terraform_docs.render(readme, tmp_path)
    assert fresh != readme
    assert "| `shiny` | `number` | `3` | A new knob. |" in fresh
