"""Enclosure labels: the enclosure id as a QR code, drawn as SVG on the server."""

from __future__ import annotations

import io

import segno


def qr_svg(text: str, *, title: str = "", scale: int = 8) -> str:
    """An inline SVG QR code of `text` that scales to its container (no fixed size).

    Error correction Q survives a scratched or wet label; the quiet zone of four
    modules is what phone scanners expect.
    """
    qr = segno.make(text, error="q", micro=False, boost_error=False)
    return qr.svg_inline(
        scale=scale,
        border=4,
        dark="#0b1f29",
        light="#ffffff",
        omitsize=True,
        svgclass="qr",
        title=title or None,
    )


def qr_svg_document(text: str, *, title: str = "") -> str:
    """A standalone SVG file (for download or another label printer)."""
    qr = segno.make(text, error="q", micro=False, boost_error=False)
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=10, border=4, dark="#0b1f29", title=title or None)
    return buf.getvalue().decode()
