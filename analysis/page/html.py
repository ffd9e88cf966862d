"""report.html: the report as one self-contained page, made from report.md's own lines.

Why from the Markdown: report.md is the one place the report's content is decided; the page
must say the same things, so it is rendered from the same lines rather than assembled a
second time. Only the Markdown the report writes is understood (headings, pipe tables,
bullets, blockquotes, paragraphs; inline images, links, **bold**, `code`) -- no Markdown
package is needed. Images (figures, sample grids, heatmaps) are read from disk, scaled down
for the page and embedded as base64 ``data:`` URIs within a size budget
(analysis/page/images.py), each linking its full-size file; the style sheet is inline, so
the file can be mailed or archived alone. Links to other files (CSV, LaTeX, PDF) stay
relative links: they are navigation, not content the page needs to render.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from .images import (
    CELL_WIDTH,
    FIGURE_DPI,
    FIGURE_WIDTH,
    PAGE_BUDGET,
    PageImage,
    page_image,
)

HTML_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 1em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1, h2, h3 { line-height: 1.2; margin: .7em 0 .35em; } h1 { font-size: 1.6em; margin-top: 0; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; } p, ul { margin: .4em 0; }
table { border-collapse: collapse; margin: .4em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .2em .5em; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; } td.mid { text-align: center; }
td:first-child { white-space: nowrap; }
img { max-width: 100%; height: auto; } td img { max-width: 360px; image-rendering: pixelated; }
blockquote { border-left: 4px solid #e0a000; margin: .6em 0; padding: .2em .8em;
             background: #fff8e6; }
code { background: #f3f3f3; padding: 0 .2em; }
figure { margin: .6em 0; } figcaption { font-size: 0.9em; color: #555; }
.note, footer { font-size: 0.9em; color: #555; } footer { border-top: 1px solid #ccc;
  margin-top: 2em; padding-top: .5em; }
"""
_INLINE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)"
                     r"|\[(?P<text>[^\]]+)\]\((?P<href>[^)]+)\)"
                     r"|\*\*(?P<bold>[^*]+)\*\*"
                     r"|`(?P<code>[^`]+)`")
# Where the page's images and notes go once its size is known: report text never holds NUL.
_TOKEN = re.compile("\x00([0-9]+|NOTICE|ABOUT)\x00")


class MissingImageError(FileNotFoundError):
    """An image report.md shows is not on disk: the page would silently lack it."""


@dataclass
class _Images:
    """The page's images in page order. Each is written as a token first; `_fill` embeds
    them, scaled down, or links them once the page's size without them is known."""

    base: Path
    refs: list[tuple[str, str, bool]] = field(default_factory=list)  # (src, alt, in a cell)

    def token(self, src: str, alt: str, cell: bool) -> str:
        if not (self.base / src).is_file():
            raise MissingImageError(f"report.md shows {src}, not found in {self.base}")
        self.refs.append((src, alt, cell))
        return f"\x00{len(self.refs) - 1}\x00"


def _inline(text: str, images: _Images, cell: bool = False) -> str:
    """Escape text and turn the inline Markdown the report writes into HTML."""
    out, last = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[last:m.start()]))
        last = m.end()
        if m["src"] is not None:
            out.append(images.token(m["src"], m["alt"], cell))
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


def _table(rows: list[str], images: _Images) -> str:
    """A pipe table: header, alignment row (each column aligned as it says), body."""
    head = "".join(f"<th>{_inline(c, images, True)}</th>" for c in _cells(rows[0]))
    aligns = [_align(c) for c in _cells(rows[1])] if len(rows) > 1 else []
    body = "".join("<tr>" + "".join(
        f"<td{aligns[i] if i < len(aligns) else ''}>{_inline(c, images, True)}</td>"
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


def _block_html(kind: str, lines: list[str], images: _Images) -> str:
    if kind == "heading":
        level = len(lines[0]) - len(lines[0].lstrip("#"))
        return f"<h{level}>{_inline(lines[0][level:].strip(), images)}</h{level}>"
    if kind == "table":
        return _table(lines, images)
    if kind == "list":
        items = "".join(f"<li>{_inline(line[2:], images)}</li>" for line in lines)
        return f"<ul>{items}</ul>"
    if kind == "quote":
        return f"<blockquote>{_inline(' '.join(x[2:] for x in lines), images)}</blockquote>"
    if kind == "figure":
        caption = lines[0][2:lines[0].index("]")]
        return f"<figure>{_inline(lines[0], images)}<figcaption>{html.escape(caption)}" \
               "</figcaption></figure>"
    return f"<p>{_inline(' '.join(lines), images)}</p>"


def _embedded(src: str, alt: str, image: PageImage) -> str:
    """The image, embedded, linking its full-size file."""
    size = f' width="{image.width}" height="{image.height}"' if image.width else ""
    return (f'<a href="{html.escape(src)}"><img alt="{html.escape(alt)}" '
            f'title="{html.escape(alt)}"{size} src="{image.data_uri()}"></a>')


def _linked(src: str, alt: str) -> str:
    """An image left out of the page: a link to its file in its place."""
    return f'<a class="note" href="{html.escape(src)}">[not embedded: {html.escape(alt)}]</a>'


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


@dataclass
class _Notes:
    """What the page says about its images: a line under the title when some are left out,
    and a footer (what was shrunk, the budget, what was left out and where it is)."""

    total: int
    budget: int
    left: list[tuple[str, str]]  # (src, alt) of the images left out

    def notice(self) -> str:
        if not self.left:
            return ""
        return (f'<p class="note">{len(self.left)} of {self.total} images are not embedded, '
                f"to keep this page within its {_mb(self.budget)} budget: each is a link in "
                "its place, listed at the end.</p>")

    def about(self) -> str:
        text = (f"About this page: its images are scaled down for it (figures to {FIGURE_DPI}"
                f" dpi and at most {FIGURE_WIDTH} px wide, pictures in tables to at most "
                f"{CELL_WIDTH} px) and embedded while the page stays within "
                f"{_mb(self.budget)}; click an image for its full-size file (the report "
                f"folder holds them all). Embedded: {self.total - len(self.left)} of "
                f"{self.total} images.")
        if self.left:
            links = ", ".join(f'<a href="{html.escape(src)}">{html.escape(src)}</a>'
                              for src, _ in self.left)
            text += f" Left out (over the budget), linked in their places: {links}."
        return f"<footer><p>{text}</p></footer>"


def _fill(page: str, images: _Images, budget: int) -> str:
    """Put the images in the page's tokens: embedded in page order while the page stays
    within ``budget`` bytes (an image that does not fit is a link, and later ones may still
    fit), then the notes. The size is counted against the page with every image left out
    and listed, an upper bound of the rest of the page, so the result never exceeds the
    budget unless the text alone does."""
    shown = [page_image(images.base / src, CELL_WIDTH if cell else FIGURE_WIDTH, not cell)
             for src, _, cell in images.refs]
    embedded = [_embedded(src, alt, image) for (src, alt, _), image in
                zip(images.refs, shown, strict=True)]
    linked = [_linked(src, alt) for src, alt, _ in images.refs]
    every = [(src, alt) for src, alt, _ in images.refs]

    def render(parts: list[str], notes: _Notes) -> str:
        named = {"NOTICE": notes.notice(), "ABOUT": notes.about()}
        return _TOKEN.sub(lambda m: named[m[1]] if m[1] in named else parts[int(m[1])], page)

    parts, left = list(linked), []
    size = len(render(parts, _Notes(len(every), budget, every)).encode("utf-8"))
    for i, tag in enumerate(embedded):
        extra = len(tag.encode("utf-8"))
        if size + extra <= budget:
            parts[i], size = tag, size + extra
        else:
            left.append(every[i])
    return render(parts, _Notes(len(every), budget, left))


def markdown_to_html(lines: list[str], base: Path, title: str,
                     budget: int = PAGE_BUDGET) -> str:
    """One self-contained HTML page of report.md's ``lines``, at most ``budget`` bytes when
    its text allows (images relative to ``base``, embedded while they fit: `_fill`)."""
    images = _Images(base)
    blocks = [_block_html(kind, block, images) for kind, block in _blocks(lines)]
    heading = next((i for i, b in enumerate(blocks) if b.startswith("<h1>")), -1)
    blocks.insert(heading + 1, "\x00NOTICE\x00")
    body = "\n".join(blocks)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n\x00ABOUT\x00\n</body></html>\n")
    return _fill(page, images, budget)


def write_html(lines: list[str], out: Path, title: str, budget: int = PAGE_BUDGET) -> Path:
    """Write ``out/report.html`` from report.md's lines; returns its path."""
    path = out / HTML_FILE
    # an element of `lines` may itself hold several lines (a whole Markdown table)
    flat = "\n".join(lines).split("\n")
    path.write_text(markdown_to_html(flat, out, title, budget), encoding="utf-8")
    return path
