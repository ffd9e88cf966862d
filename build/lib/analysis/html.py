"""report.html: the report as one self-contained page, made from report.md's own lines.

Why from the Markdown: report.md is the one place the report's content is decided; the page
must say the same things, so it is rendered from the same lines rather than assembled a
second time. Only the Markdown the report writes is understood (headings, pipe tables,
bullets, blockquotes, paragraphs; inline images, links, **bold**, `code`) -- no Markdown
package is needed. Every image (figures, sample grids, heatmaps) is read from disk and
embedded as a base64 ``data:`` URI and the style sheet is inline, so the file can be mailed
or archived alone. Links to other files (CSV, LaTeX, PDF) stay relative links: they are
navigation, not content the page needs to render.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

HTML_FILE = "report.html"
MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml",
        "gif": "image/gif"}
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; } td.mid { text-align: center; }
td:first-child { white-space: nowrap; }
img { max-width: 100%; height: auto; } td img { max-width: 360px; image-rendering: pixelated; }
blockquote { border-left: 4px solid #e0a000; margin: .6em 0; padding: .2em .8em;
             background: #fff8e6; }
code { background: #f3f3f3; padding: 0 .2em; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
"""
_INLINE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)"
                     r"|\[(?P<text>[^\]]+)\]\((?P<href>[^)]+)\)"
                     r"|\*\*(?P<bold>[^*]+)\*\*"
                     r"|`(?P<code>[^`]+)`")




class MissingImageError(FileNotFoundError):
    """An image report.md shows is not on disk: the page would silently lack it."""


def data_uri(path: Path) -> str:
    """The file as a ``data:`` URI (its bytes, base64)."""
    mime = MIME.get(path.suffix.lower().lstrip("."), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _inline(text: str, base: Path) -> str:
    """Escape text and turn the inline Markdown the report writes into HTML."""
    out, last = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[last:m.start()]))
        last = m.end()
        if m["src"] is not None:
            path = base / m["src"]
            if not path.is_file():
                raise MissingImageError(f"report.md shows {m['src']}, not found in {base}")
            out.append(f'<img alt="{html.escape(m["alt"])}" title="{html.escape(m["alt"])}" '
                       f'src="{data_uri(path)}">')
        elif m["href"] is not None:
            out.append(f'<a href="{html.escape(m["href"])}">{html.escape(m["text"])}</a>')
        elif m["bold"] is not None:
            out.append(f"<strong>{html.escape(m['bold'])}</strong>")
        else:
            out.append(f"<code>{html.escape(m['code'])}</code>")
    return "".join(out) + html.escape(text[last:])


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _align(spec: str) -> str:
    """The CSS class of a column from its Markdown alignment cell (---: right, :---: centre)."""
    right, left = spec.endswith(":"), spec.startswith(":")
    return ' class="num"' if right and not left else ' class="mid"' if right else ""


def _table(rows: list[str], base: Path) -> str:
    """A pipe table: header, alignment row (each column aligned as it says), body."""
    head = "".join(f"<th>{_inline(c, base)}</th>" for c in _cells(rows[0]))
    aligns = [_align(c) for c in _cells(rows[1])] if len(rows) > 1 else []
    body = "".join("<tr>" + "".join(
        f"<td{aligns[i] if i < len(aligns) else ''}>{_inline(c, base)}</td>"
        for i, c in enumerate(_cells(r))) + "</tr>" for r in rows[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Group lines into (kind, lines) blocks: heading, table, list, quote, figure, para."""
    blocks: list[tuple[str, list[str]]] = []
    for line in lines:
        kind = ("blank" if not line.strip() else "heading" if line.startswith("#") else
                "table" if line.startswith("|") else "list" if line.startswith("- ") else
                "quote" if line.startswith("> ") else
                "figure" if line.startswith("![") else "para")
        if blocks and kind == blocks[-1][0] and kind in ("table", "list", "quote", "para"):
            blocks[-1][1].append(line)
        else:
            blocks.append((kind, [line]))
    return [b for b in blocks if b[0] != "blank"]


def _block_html(kind: str, lines: list[str], base: Path) -> str:
    if kind == "heading":
        level = len(lines[0]) - len(lines[0].lstrip("#"))
        return f"<h{level}>{_inline(lines[0][level:].strip(), base)}</h{level}>"
    if kind == "table":
        return _table(lines, base)
    if kind == "list":
        items = "".join(f"<li>{_inline(line[2:], base)}</li>" for line in lines)
        return f"<ul>{items}</ul>"
    if kind == "quote":
        return f"<blockquote>{_inline(' '.join(x[2:] for x in lines), base)}</blockquote>"
    if kind == "figure":
        caption = lines[0][2:lines[0].index("]")]
        return f"<figure>{_inline(lines[0], base)}<figcaption>{html.escape(caption)}" \
               "</figcaption></figure>"
    return f"<p>{_inline(' '.join(lines), base)}</p>"


def markdown_to_html(lines: list[str], base: Path, title: str) -> str:
    """One self-contained HTML page of report.md's ``lines``; images relative to ``base``."""
    body = "\n".join(_block_html(kind, block, base) for kind, block in _blocks(lines))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def write_html(lines: list[str], out: Path, title: str) -> Path:
    """Write ``out/report.html`` from report.md's lines; returns its path."""
    path = out / HTML_FILE
    # an element of `lines` may itself hold several lines (a whole Markdown table)
    flat = "\n".join(lines).split("\n")
    path.write_text(markdown_to_html(flat, out, title), encoding="utf-8")
    return path
