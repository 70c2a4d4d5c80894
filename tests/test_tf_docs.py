"""README.md's inputs/outputs tables match the .tf files, and the scanner reads tricky HCL right."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("tf_docs", ROOT / "scripts" / "tf_docs.py")
assert _spec is not None
assert _spec.loader is not None
tf_docs = importlib.util.module_from_spec(_spec)
sys.modules["tf_docs"] = tf_docs  # dataclasses look their module up there
_spec.loader.exec_module(tf_docs)

TRICKY = r"""
# a comment with { and "
variable "pools" {
  description = <<-EOT
    Pools by name.
    - queues: "a" | "b"
  EOT
  type = map(object({
    queues = list(string) # trailing comment }
    min    = optional(number, 0)
  }))
  default = { x = { queues = ["q-${"}"}"] } }
  validation {
    condition     = length(var.pools) > 0
    error_message = "needs one { pool"
  }
}

/* block comment variable "ghost" {} */
output "url" {
  description = "The URL, as $${scheme}://host."
  value       = "https://${var.host}"
}
"""


def test_readme_tables_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tf_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_scanner_reads_heredocs_types_defaults_and_skips_comments_and_nested_blocks() -> None:
    _, blocks = tf_docs.parse_body(TRICKY)
    assert [(b.kind, b.labels) for b in blocks] == [("variable", ("pools",)), ("output", ("url",))]
    pools, url = blocks
    assert tf_docs.string_value(pools.attributes["description"].source) == 'Pools by name.\n- queues: "a" | "b"\n'
    assert pools.attributes["type"].source.startswith("map(object({\n")
    assert pools.attributes["type"].source.endswith("}))")
    assert pools.attributes["default"].source == '{ x = { queues = ["q-${"}"}"] } }'
    assert "validation" not in pools.attributes
    assert tf_docs.string_value(url.attributes["description"].source) == "The URL, as ${scheme}://host."


def test_table_cells_escape_pipes_and_html_but_keep_code() -> None:
    assert tf_docs._cell_text("a | b <x> `c | <d>`") == "a \\| b &lt;x&gt; `c \\| <d>`"
    assert tf_docs._cell_code("list(string)") == "`list(string)`"
    assert tf_docs._cell_code("object({\n    a = string\n  })") == "<pre>object({<br>  a = string<br>})</pre>"


def test_the_scaler_submodule_readme_has_its_own_tables() -> None:
    """modules/scaler/README.md lists the submodule's inputs and outputs, not the root module's."""
    readme = (ROOT / "modules" / "scaler" / "README.md").read_text()
    tables = readme[readme.index(tf_docs.BEGIN) : readme.index(tf_docs.END)]
    for name in ("pools", "cluster", "broker", "config", "service_arns"):
        assert f"| `{name}` |" in tables
    assert "| `worker_pools` |" not in tables
    assert tables == tf_docs.render(ROOT / "modules" / "scaler")[: len(tables)]
