"""Figure helpers shared by the report: one look, Agg backend, PNG bytes.

Every plotting function in fisherkit returns a ``matplotlib.figure.Figure``; the report turns
each into a PNG file and an embedded ``data:`` image with ``png_bytes``.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLORS = {"blue": "#1f77b4", "orange": "#ff7f0e", "green": "#2ca02c", "red": "#d62728", "purple": "#9467bd",
          "grey": "#7f7f7f"}


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kwargs):
    """A new (fig, axes) pair sized ``width × height`` inches per panel, not registered with pyplot."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    if nrows == 1 and ncols == 1:
        return fig, axes[0, 0]
    return fig, axes.ravel() if nrows == 1 or ncols == 1 else axes


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes (white background)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)  # frees figures made with pyplot; a no-op for bare Figure objects
    return buf.getvalue()


def is_png(data: bytes) -> bool:
    """True for bytes that start with the PNG signature and an IHDR chunk of non-zero size."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    return width > 0 and height > 0


__all__ = ["Figure", "figure", "png_bytes", "is_png", "COLORS"]
