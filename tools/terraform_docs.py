"""terraform/README.md's inputs and outputs tables, generated from variables.tf and outputs.tf.

The tables sit between ``<!-- BEGIN GENERATED: inputs -->`` / ``<!-- END GENERATED: inputs -->``
(and the same for ``outputs``); everything else in the README is prose and stays as written.
``tests/infra/test_terraform_docs.py`` fails while the README is stale.

    .venv/bin/python tools/terraform_docs.py           # rewrite the tables
    .venv/bin/python tools/terraform_docs.py --check   # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import hcl2

TERRAFORM_DIR = Path(__file__).resolve().parents[1] / "terraform"
README = TERRAFORM_DIR / "README.md"


def _unquote(text: str) -> str:
    """python-hcl2 keeps the quotes of string literals and ${} around expressions."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('\\"', '"')
    if text.startswith("${") and text.endswith("}"):
        return text[2:-1]
    return text


def _blocks(path: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        parsed = hcl2.load(handle)
    return [(_unquote(name), body) for block in parsed.get(kind, []) for name, body in block.items()]


def _cell(text: str) -> str:
    """One Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _default(body: dict[str, Any]) -> str:
    if "default" not in body:
        return "required"
    value = body["default"]
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{_unquote(value)}"`' if value.startswith('"') else f"`{_unquote(value)}`"
    return f"`{value}`".replace("'", '"').replace("True", "true").replace("False", "false").replace("None", "null")


def inputs_table(terraform_dir: Path = TERRAFORM_DIR) -> str:
    rows = ["| name | type | default | description |", "| --- | --- | --- | --- |"]
    for name, body in _blocks(terraform_dir / "variables.tf", "variable"):
        type_ = _unquote(str(body.get("type", "any")))
        rows.append(
            f"| `{name}` | `{_cell(type_)}` | {_cell(_default(body))} | {_cell(_unquote(body.get('description', '')))} |"
        )
    return "\n".join(rows)


def outputs_table(terraform_dir: Path = TERRAFORM_DIR) -> str:
    rows = ["| name | description |", "| --- | --- |"]
    for name, body in _blocks(terraform_dir / "outputs.tf", "output"):
        rows.append(f"| `{name}` | {_cell(_unquote(body.get('description', '')))} |")
    return "\n".join(rows)


def _section(kind: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN GENERATED: {kind} -->\n)(.*?)(<!-- END GENERATED: {kind} -->)", re.DOTALL)


def render(readme: str, terraform_dir: Path = TERRAFORM_DIR) -> str:
    """The README with both generated tables replaced by what the .tf files say now."""
    for kind, table in (("inputs", inputs_table(terraform_dir)), ("outputs", outputs_table(terraform_dir))):
        pattern = _section(kind)
        if not pattern.search(readme):
            raise ValueError(f"terraform/README.md has no <!-- BEGIN GENERATED: {kind} --> ... END section")
        readme = pattern.sub(lambda match, table=table: match.group(1) + table + "\n" + match.group(3), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's tables are stale")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("terraform/README.md is stale: run .venv/bin/python tools/terraform_docs.py", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        README.write_text(fresh, encoding="utf-8")
        print("terraform/README.md: inputs and outputs tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
