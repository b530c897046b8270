"""Markdown tables, the one format every written report and study table uses."""

from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A GitHub Markdown table: `header` cells, then one line per row of cells (strings;
  format numbers before). Ends with a newline."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"
