"""Render report content as ONE self-contained HTML file (inline CSS, base64 PNGs, no external URL), plus
Markdown and one CSV per table.

The page carries a tiny inline script that shows a figure at full size when it is clicked (an overlay made on
the click, closed by the next one) and, on load, writes ``{images, loaded, tables, errors}`` as JSON
into ``<div id="status">`` (images counted as loaded when ``naturalWidth > 0``; errors from
``window.onerror``, failed resources and ``console.error``), so a headless browser can check the page with
``--dump-dom``. A Content-Security-Policy forbids any network load.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medprobe.report.analyze import Figure, Table
from medprobe.utils import atomic_write_text

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1a1a1a;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:18px 26px 40px}
h1{font-size:1.55em;margin:.2em 0}h2{border-bottom:2px solid #0072B2;padding-bottom:3px;margin-top:1.8em}
h3{margin-top:1.3em;color:#333}
.meta{color:#555;font-size:.9em}.meta code{background:#eee;padding:1px 4px;border-radius:3px}
.banner{background:#fff3cd;border:2px solid #d39e00;color:#5c4400;padding:10px 14px;border-radius:6px;
 margin:12px 0;font-weight:600}
.ok{background:#e6f4ea;border-color:#34a853;color:#1e4620}
table{border-collapse:collapse;margin:8px 0 4px;font-size:.84em;background:#fff}
th,td{border:1px solid #d0d0d0;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#eef3f8}tr:nth-child(even) td{background:#f7f9fb}
.tnote,.cap{color:#555;font-size:.82em;margin:2px 0 12px}
.figs{display:flex;flex-wrap:wrap;gap:14px}.fig{background:#fff;border:1px solid #ddd;padding:6px;border-radius:4px}
.fig img{max-width:540px;height:auto;display:block;cursor:zoom-in}.wide img{max-width:1100px}
#zoom{position:fixed;inset:0;background:rgba(0,0,0,.88);overflow:auto;z-index:10;cursor:zoom-out}
#zoom img{display:block;margin:16px auto;max-width:none;background:#fff}
.note{color:#8a4b00;font-size:.88em}nav a{margin-right:12px}
#status{color:#999;font-size:.7em;margin-top:30px}
"""

STATUS_JS = """
(function(){var errs=[];
window.addEventListener('error',function(e){var t=e.target;
 errs.push(t&&t!==window&&(t.src||t.href)?'failed to load '+(t.tagName||'')+' '+String(t.src||t.href).slice(0,60)
 :String(e.message||'error'));},true);
var ce=console.error;console.error=function(){errs.push(Array.prototype.join.call(arguments,' '));
 return ce.apply(console,arguments);};
document.addEventListener('click',function(e){var t=e.target,z=document.getElementById('zoom');
 if(z){z.parentNode.removeChild(z);return;}
 if(t&&t.tagName==='IMG'&&t.parentNode&&(' '+t.parentNode.className+' ').indexOf(' fig ')>=0){
 z=document.createElement('div');z.id='zoom';var i=document.createElement('img');i.src=t.src;i.alt=t.alt;
 z.appendChild(i);document.body.appendChild(z);}});
window.addEventListener('load',function(){var im=document.images,k=0;
 for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){k++;}}
 var s=document.getElementById('status');
 s.textContent=JSON.stringify({images:im.length,loaded:k,tables:document.querySelectorAll('table').length,
 errors:errs});s.setAttribute('data-state','done');});})();
"""

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


@dataclass
class Section:
    """A report section: heading, paragraphs (trusted HTML), tables, figures, notes; sub-sections."""

    title: str
    anchor: str
    html_intro: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)
    wide: bool = False


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def table_html(t: Table) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    note = f'<div class="tnote">{esc(t.note)}</div>' if t.note else ""
    return (f'<h3 id="{esc(t.slug)}">{esc(t.title)}</h3><table data-table="{esc(t.slug)}"><thead><tr>{head}'
            f"</tr></thead><tbody>{body}</tbody></table>{note}")


def figure_html(f: Figure, wide: bool = False) -> str:
    b64 = base64.b64encode(f.png).decode("ascii")
    cap = f'<div class="cap">{esc(f.caption)}</div>' if f.caption else ""
    return (f'<div class="fig{" wide" if wide else ""}"><img alt="{esc(f.title)}" data-fig="{esc(f.slug)}" '
            f'src="data:image/png;base64,{b64}">{cap}</div>')


def _section_html(s: Section, level: int = 2) -> str:
    parts = [f'<h{level} id="{esc(s.anchor)}">{esc(s.title)}</h{level}>', s.html_intro]
    parts += [f'<p class="note">{esc(n)}</p>' for n in s.notes]
    parts += [table_html(t) for t in s.tables]
    if s.figures:
        parts.append('<div class="figs">' + "".join(figure_html(f, s.wide) for f in s.figures) + "</div>")
    parts += [_section_html(c, min(level + 1, 4)) for c in s.children]
    return "\n".join(p for p in parts if p)


def render_html(title: str, header_html: str, banner: str | None, sections: Sequence[Section]) -> str:
    nav = " ".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    ban = (f'<div class="banner" id="untrained-banner">{esc(banner)}</div>' if banner else "")
    body = "\n".join(_section_html(s) for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style>
<script>{STATUS_JS}</script></head>
<body><main>
<h1>{esc(title)}</h1>
{header_html}
{ban}
<nav>{nav}</nav>
{body}
<div id="status" data-state="pending">page check pending</div>
</main></body></html>
"""


def _md_text(s: Any) -> str:
    """Text for Markdown: names from datasets and files never become live HTML there (``<``, ``>``, ``&``)."""
    return html.escape(str(s), quote=False)


def _md_cell(s: Any) -> str:
    return _md_text(s).replace("|", "\\|").replace("\n", " ")


def table_md(t: Table) -> str:
    lines = [f"### {_md_text(t.title)}", "", "| " + " | ".join(_md_cell(c) for c in t.columns) + " |",
             "|" + "|".join("---" for _ in t.columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.note:
        lines += ["", f"_{_md_text(t.note)}_"]
    return "\n".join(lines) + "\n"


def render_md(title: str, header_lines: list[str], banner: str | None, sections: Sequence[Section]) -> str:
    out = [f"# {_md_text(title)}", "", *(_md_text(h) for h in header_lines), ""]
    if banner:
        out += [f"> **{_md_text(banner)}**", ""]

    def sec(s: Section, level: int) -> None:
        out.extend(["#" * level + " " + _md_text(s.title), ""])
        out.extend(f"- {_md_text(n)}" for n in s.notes)
        if s.notes:
            out.append("")
        for t in s.tables:
            out.append(table_md(t))
        if s.figures:
            out.append("Figures (in the HTML report): " + "; ".join(_md_text(f.title) for f in s.figures) + "\n")
        for c in s.children:
            sec(c, min(level + 1, 4))

    for s in sections:
        sec(s, 2)
    return "\n".join(out)


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def table_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.raw_columns or t.columns)
    for row in t.raw:
        w.writerow([_csv_value(v) for v in row])
    return buf.getvalue()


def write_all(out_html: Path, html_text: str, md_text: str, tables: Sequence[Table]) -> list[Path]:
    """Write the HTML, ``<stem>.md`` and ``<stem>-<table>.csv`` beside it (atomic); returns the paths."""
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, html_text, encoding="utf-8")
    md = out_html.with_suffix(".md")
    atomic_write_text(md, md_text, encoding="utf-8")
    paths = [out_html, md]
    seen: set[str] = set()
    for t in tables:
        slug = t.slug
        while slug in seen:
            slug += "-2"
        seen.add(slug)
        p = out_html.with_name(f"{out_html.stem}-{slug}.csv")
        atomic_write_text(p, table_csv(t), encoding="utf-8")
        paths.append(p)
    return paths
