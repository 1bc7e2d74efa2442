"""Render a parcel audit as HTML (one self-contained file) and PDF (weasyprint).

The HTML embeds the figure and the pictures of the images behind the events (PNG, base64) and the
outline (inline SVG), so the file can be mailed or archived alone; the PDF is made from the same HTML.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from cbm_tasks.report.parcel_audit import ParcelAudit

__all__ = ["ReportFiles", "render_html", "write_parcel_report"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """The files of one report."""

    html: Path
    pdf: Path | None


def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("cbm_tasks.report", "templates"),
                              autoescape=select_autoescape(["html"]), undefined=StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)
    environment.filters["b64"] = lambda data: base64.b64encode(data).decode()  # embedded pictures (PNG)
    return environment


def render_html(audit: ParcelAudit) -> str:
    """Return the report as one self-contained HTML document."""
    width = float(audit.parcel.view_box.split()[2])
    return _environment().get_template("parcel.html").render(a=audit, stroke=f"{width / 150:.3f}")


def _write_atomic(path: Path, content: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(content)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_parcel_report(audit: ParcelAudit, out_dir: Path, *, pdf: bool = True) -> ReportFiles:
    """Write ``<aoi>_<year>_<parcel>.html`` (and ``.pdf``) into *out_dir* (created); return the paths.

    A file is replaced only once it is complete, so a reader never sees half a report.
    """
    import weasyprint  # loaded here: Pango's start-up is paid only when a PDF is made

    # weasyprint logs every layout step of every page at INFO: one line per report is ours (R9)
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _SAFE.sub("_", f"{audit.aoi}_{audit.year}_{audit.parcel.parcel_id}")
    html = render_html(audit)
    html_path = out_dir / f"{stem}.html"
    _write_atomic(html_path, html.encode())
    pdf_path = None
    if pdf:
        pdf_path = out_dir / f"{stem}.pdf"
        document = weasyprint.HTML(string=html, base_url=str(out_dir)).write_pdf()
        _write_atomic(pdf_path, document if document is not None else b"")
    log.info("wrote parcel report aoi=%s year=%d parcel=%s html=%s pdf=%s seconds=%.2f", audit.aoi, audit.year,
             audit.parcel.parcel_id, html_path, pdf_path, time.perf_counter() - t0)
    return ReportFiles(html_path, pdf_path)
