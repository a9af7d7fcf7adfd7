"""A matplotlib figure as PNG bytes, the one way every report and history figure is written."""

from __future__ import annotations

import io
import warnings

from matplotlib.figure import Figure


def png_bytes(fig: Figure, dpi: int) -> bytes:
    """``fig`` as a PNG at ``dpi``; the figure is cleared afterwards (its memory is not kept).

    A variant or scenario name may hold any character, and be of any length: a character the font
    lacks is drawn as a box, and labels too long for the layout overlap. The figure is still written;
    a warning per character on stderr would tell the reader nothing more.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"constrained_layout not applied", category=UserWarning)
        fig.savefig(buffer, format="png", dpi=dpi)
    fig.clear()
    return buffer.getvalue()
