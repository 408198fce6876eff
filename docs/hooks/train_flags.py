"""MkDocs hook: the table of train.py's flags, generated from their declarations.

Replaces the marker ``<!-- train.py flags -->`` in a page with one row per flag
of ``training.config.flag_declarations()``, so the reference cannot drift from
the flags ``train.py`` defines.
"""

import os
import sys

MARKER = "<!-- train.py flags -->"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cell(text):
    """Help text as a table cell: no Markdown or HTML read into it."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "|*_`[]":
        text = text.replace(char, "\\" + char)
    return text.replace("\n", " ")


def _default(kind, default):
    if default is None:
        return ""
    if kind == "list":
        return f"`{','.join(map(str, default))}`"
    return f"`{default}`"


def _values(kind, args):
    if "enum_values" in args:
        return ", ".join(f"`{value}`" for value in args["enum_values"])
    bounds = [f"{'>=' if key == 'lower_bound' else '<='} {value}"
              for key, value in args.items() if key in ("lower_bound", "upper_bound")]
    return f"{kind} {', '.join(bounds)}".strip()


def flags_table():
    """The Markdown table of every flag: name, values, default, help."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from training.config import flag_declarations

    rows = ["| flag | values | default | meaning |", "|---|---|---|---|"]
    for kind, name, default, help_text, args in flag_declarations():
        rows.append(f"| `--{name}` | {_values(kind, args)} | {_default(kind, default)} | {_cell(help_text)} |")
    return "\n".join(rows)


def on_page_markdown(markdown, **kwargs):
    if MARKER in markdown:
        return markdown.replace(MARKER, flags_table())
    return markdown
