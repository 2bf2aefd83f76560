"""A self-contained HTML page from the report's Markdown (no network, images inlined).

:func:`markdown_to_html` converts the subset of Markdown that ``mpcs report`` writes:
ATX headings (``#`` .. ``######``), paragraphs, pipe tables (with ``:---:`` alignment),
images on their own line, bullet and numbered lists, fenced code blocks, and inline
``code``, ``**bold**``, ``*italic*``, ``[links](url)`` and ``![images](src)``. Everything
else is shown as text (HTML-escaped). Local images become ``data:`` URIs, so the page opens
in a browser with no other file; a missing image is replaced by a visible note, and remote
images are not fetched (they show as a note too).

Names (methods, encoders, folders) go into the Markdown through :func:`escape_markdown`, so
a name such as ``[x](javascript:alert(1))`` or ``![a](/etc/passwd)`` is shown as text, not
turned into a link or an inlined file. The converter honours those backslash escapes and,
whatever the Markdown says, only makes links to ``http``, ``https``, ``mailto`` or relative
addresses (others are shown as text) and only inlines images inside ``base_dir`` (no
absolute path, no ``..``).

Example:
    >>> html = markdown_to_html("# Title\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n")
    >>> "<table>" in html and "<h1" in html
    True
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
from pathlib import Path

from mpcs.core.io import atomic_write_text

__all__ = ["escape_markdown", "markdown_to_html", "render_page", "write_html"]

log = logging.getLogger(__name__)

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1150px; padding: 0 1.2em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 1.8em; }
h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #c8c8c8; padding: .3em .65em; text-align: right; }
th { background: #eef1f5; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f2f2f2; padding: 0 .25em; border-radius: 3px; font-size: 0.92em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; }
pre code { background: none; padding: 0; }
figure { margin: 1em 0 .2em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.missing { color: #a33; font-style: italic; }
""".strip()

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_IMAGE_LINE = re.compile(r"^!\[((?:\\.|[^\]\\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)$")
_TABLE_SEP = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_INLINE_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")  # backslash + ASCII punctuation (CommonMark)
_CODE_SPAN = re.compile(r"((?<!\\)`[^`]+`)")
#: Characters :func:`escape_markdown` puts a backslash before.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]<>|])")
_SAFE_SCHEMES = ("http", "https", "mailto")
#: Escaped punctuation is carried through the inline rules as a private-use character.
_PRIVATE = 0xE000
_PROTECTED = re.compile("[\ue021-\ue07e]")


def escape_markdown(text: object) -> str:
    """``text`` (a name) as literal Markdown text: no link, image, code, emphasis or table
    cell break can come out of it, and line breaks become spaces."""
    flat = " ".join(str(text).splitlines())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def _unescape(text: str) -> str:
    """Markdown text with its backslash escapes resolved."""
    return _ESCAPED.sub(r"\1", text)


def _protect(text: str) -> str:
    """Backslash-escaped punctuation as private-use characters the inline rules ignore."""
    return _ESCAPED.sub(lambda m: chr(_PRIVATE + ord(m.group(1))), text)


def _plain(text: str) -> str:
    """Protected characters back as the characters themselves."""
    return _PROTECTED.sub(lambda m: chr(ord(m.group(0)) - _PRIVATE), text)


def _safe_href(url: str) -> bool:
    """Only web, mail and relative links (no ``javascript:``, ``data:``, ``file:`` ...)."""
    scheme = re.match(r"^([a-z][a-z0-9+.-]*):", url, re.I)
    return scheme is None or scheme.group(1).lower() in _SAFE_SCHEMES


class _Images:
    """Turns image sources into inline ``<img>`` tags (data URIs) relative to ``base``."""

    def __init__(self, base: Path | None) -> None:
        self.base = base

    def tag(self, alt: str, src: str) -> str:
        alt_attr = html.escape(alt, quote=True)
        if re.match(r"^[a-z][a-z0-9+.-]*://", src, re.I) or src.startswith("//"):
            return (f'<span class="missing">[remote image not embedded: '
                    f'{html.escape(src)}]</span>')
        if src.startswith("data:"):
            return f'<img src="{html.escape(src, quote=True)}" alt="{alt_attr}">'
        if Path(src).is_absolute() or ".." in Path(src).parts:
            log.warning("report.html: image %s not embedded (outside the report folder)", src)
            return (f'<span class="missing">[image outside the report folder not embedded: '
                    f'{html.escape(src)}]</span>')
        path = Path(src) if self.base is None else self.base / src
        mime = _MIME.get(path.suffix.lower())
        try:
            if mime is None:
                raise OSError(f"unsupported image type {path.suffix!r}")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError as e:
            log.warning("report.html: image %s not embedded (%s)", src, e)
            return f'<span class="missing">[missing image: {html.escape(src)}]</span>'
        return f'<img src="data:{mime};base64,{data}" alt="{alt_attr}">'


def _inline(text: str, images: _Images) -> str:
    """Escape ``text`` and apply the inline markup (code spans are left verbatim)."""
    out = []
    for part in _CODE_SPAN.split(text):
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(_inline_text(part, images))
    return "".join(out)


def _inline_text(part: str, images: _Images) -> str:
    """Images, links, bold and italic of text outside code spans, HTML-escaped."""
    kept: list[str] = []

    def keep(s: str) -> str:
        kept.append(s)
        return f"\x00{len(kept) - 1}\x00"

    part = _protect(part)
    part = _INLINE_IMAGE.sub(
        lambda m: keep(images.tag(_plain(m.group(1)), _plain(m.group(2)))), part)
    part = _LINK.sub(lambda m: keep(_link(_plain(m.group(1)), _plain(m.group(2)))), part)
    part = html.escape(part, quote=False)
    part = _BOLD.sub(r"<strong>\1</strong>", part)
    part = _ITALIC.sub(r"<em>\1</em>", part)
    part = re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], part)
    return _PROTECTED.sub(lambda m: html.escape(_plain(m.group(0))), part)


def _link(text: str, url: str) -> str:
    """An ``<a>`` to ``url``, or the Markdown shown as text when the scheme is not safe."""
    if not _safe_href(url):
        return html.escape(f"[{text}]({url})")
    return f'<a href="{html.escape(url, quote=True)}">{html.escape(text)}</a>'


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def _align(sep: str) -> str:
    sep = sep.strip()
    if sep.startswith(":") and sep.endswith(":"):
        return "center"
    if sep.endswith(":"):
        return "right"
    if sep.startswith(":"):
        return "left"
    return ""


def _table(lines: list[str], images: _Images) -> str:
    head = _cells(lines[0])
    aligns = [_align(s) for s in _cells(lines[1])]
    aligns += [""] * (len(head) - len(aligns))

    def cell(tag: str, text: str, i: int) -> str:
        a = aligns[i] if i < len(aligns) else ""
        style = f' style="text-align:{a}"' if a else ""
        return f"<{tag}{style}>{_inline(text, images)}</{tag}>"

    rows = ["<thead><tr>" + "".join(cell("th", c, i) for i, c in enumerate(head))
            + "</tr></thead>", "<tbody>"]
    for line in lines[2:]:
        cells = _cells(line)
        cells += [""] * (len(head) - len(cells))
        rows.append("<tr>" + "".join(cell("td", c, i) for i, c in enumerate(cells)) + "</tr>")
    rows.append("</tbody>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _slug(text: str, used: dict[str, int]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    used[slug] = used.get(slug, 0) + 1
    return slug if used[slug] == 1 else f"{slug}-{used[slug]}"


def markdown_to_html(text: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """The HTML body of Markdown ``text`` (see the module docstring for the subset);
    image paths are resolved against ``base_dir`` and inlined."""
    images = _Images(Path(base_dir) if base_dir is not None else None)
    lines = text.splitlines()
    out: list[str] = []
    used: dict[str, int] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        if stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            code = "\n".join(lines[i + 1:j])
            out.append(f"<pre><code>{html.escape(code)}</code></pre>")
            i = j + 1
            continue
        m = _HEADING.match(stripped)
        if m:
            level, title = len(m.group(1)), m.group(2)
            out.append(f'<h{level} id="{_slug(title, used)}">{_inline(title, images)}'
                       f"</h{level}>")
            i += 1
            continue
        m = _IMAGE_LINE.match(stripped)
        if m:
            out.append(f"<figure>{images.tag(_unescape(m.group(1)), m.group(2))}</figure>")
            i += 1
            continue
        if ("|" in stripped and i + 1 < len(lines)
                and _TABLE_SEP.match(lines[i + 1].strip())):
            j = i + 2
            while j < len(lines) and lines[j].strip() and "|" in lines[j]:
                j += 1
            out.append(_table([ln.strip() for ln in lines[i:j]], images))
            i = j
            continue
        for pattern, tag in ((_BULLET, "ul"), (_NUMBERED, "ol")):
            if pattern.match(line):
                items = []
                while i < len(lines) and pattern.match(lines[i]):
                    items.append(pattern.match(lines[i]).group(1))
                    i += 1
                    # continuation lines of an item (indented, not a new item)
                    while (i < len(lines) and lines[i].startswith(("  ", "\t"))
                           and lines[i].strip() and not pattern.match(lines[i])):
                        items[-1] += " " + lines[i].strip()
                        i += 1
                out.append(f"<{tag}>" + "".join(f"<li>{_inline(t, images)}</li>"
                                                for t in items) + f"</{tag}>")
                break
        else:
            para = [stripped]
            i += 1
            while i < len(lines):
                nxt = lines[i].strip()
                if (not nxt or _HEADING.match(nxt) or nxt.startswith("```")
                        or _IMAGE_LINE.match(nxt) or _BULLET.match(lines[i])
                        or _NUMBERED.match(lines[i])
                        or ("|" in nxt and i + 1 < len(lines)
                            and _TABLE_SEP.match(lines[i + 1].strip()))):
                    break
                para.append(nxt)
                i += 1
            out.append(f"<p>{_inline(' '.join(para), images)}</p>")
    return "\n".join(out)


def render_page(body: str, title: str) -> str:
    """A complete HTML5 document around ``body`` with the report's inline CSS."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def write_html(markdown: str, out_path: str | os.PathLike[str],
               base_dir: str | os.PathLike[str] | None = None,
               title: str = "mpcs report") -> Path:
    """Convert ``markdown`` and write the self-contained page to ``out_path`` (atomically).
    Image paths are relative to ``base_dir`` (default: the page's folder)."""
    out = Path(out_path)
    base = Path(base_dir) if base_dir is not None else out.parent
    atomic_write_text(out, render_page(markdown_to_html(markdown, base), title))
    return out
