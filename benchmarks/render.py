"""Config templates in benchmarks/configs/, rendered with the ports chosen at run time.

Placeholders are `{{NAME}}` (nginx and HAProxy configs use `$` themselves). Rendering fails if
a placeholder is left over, so a template and the harness cannot drift apart silently.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")


def render(template: str, values: dict[str, str | int | Path], dest: Path) -> Path:
    """Render configs/<template> into `dest` (a file path) and return `dest`."""
    text = (CONFIG_DIR / template).read_text()

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{template}: no value for {{{{{key}}}}}")
        return str(values[key])

    dest.write_text(_PLACEHOLDER.sub(substitute, text))
    return dest
