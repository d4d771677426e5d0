"""Writing figures: standalone HTML (plotly.js inlined, opens offline), PNG with kaleido."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

import plotly.graph_objects as go


def save(fig: go.Figure, path: Union[str, Path], png: Optional[bool] = None) -> list[Path]:
    """Write ``path`` as standalone HTML (plotly.js inlined: opens offline) and ``path`` with
    ``.png`` when kaleido is installed (``png=True`` makes a missing kaleido an error).

    Returns the paths written.
    """
    target = Path(path)
    html = target if target.suffix == ".html" else target.with_suffix(".html")
    html.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    written = [html]
    if png is False:
        return written
    try:
        import kaleido  # noqa: F401
    except ImportError:
        if png:
            raise ImportError("PNG export needs kaleido: pip install 'drope_lens[png]' (or pip install kaleido).")
        return written
    try:
        fig.write_image(html.with_suffix(".png"), scale=2)
        written.append(html.with_suffix(".png"))
    except Exception as exc:  # kaleido present but cannot start (e.g. no Chrome for kaleido >= 1)
        if png:
            raise
        warnings.warn(f"PNG export skipped: kaleido failed ({exc}).", stacklevel=2)
    return written
