"""Static SVG images of drope_lens's plotly figures, with no browser and no extra package.

plotly's own static export needs kaleido (and, from kaleido 1.0 on, a Chrome it downloads), so a
notebook whose figures are only plotly JSON shows blank figures in an HTML export or on GitHub.
:func:`to_svg` draws the trace types drope_lens's figures and notebook use (``scatter`` lines and
markers with error bars, ``bar``, ``heatmap``) on the figure's own subplot grid, axis titles,
tick labels (``tickvals``/``ticktext``, ``dtick``, log axes), subplot titles, legend and
colour bar. Anything else (another trace type, a shape) is left out and a line under the image
says so. It is a faithful picture of the data, not a pixel copy of plotly's rendering; hover
values stay in the interactive figure.

In a notebook, ``drope_lens.outputs.static.use_in_notebook()`` makes every displayed plotly figure carry
both the interactive plotly JSON and this SVG: Jupyter and VS Code show the interactive one, an
HTML export (nbconvert) and GitHub show the SVG.
"""

from __future__ import annotations

import html
import math
from typing import Any, Optional, Sequence

#: default image width (px) when the layout sets none
WIDTH = 900
FONT = "Helvetica,Arial,sans-serif"
DRAWN = ("scatter", "bar", "heatmap")
_DEFAULT_COLORS = ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880"]


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _plain(text: Any) -> str:
    """plotly label text without its HTML tags (<b>, <br>, ...)."""
    import re

    return re.sub(r"<[^>]+>", " ", str(text or "")).strip()


def _nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step - 1e-9) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    if isinstance(value, str):
        return value
    if abs(value) >= 1e5 or (0 < abs(value) < 1e-3):
        return f"{value:.2g}"
    return f"{value:.6g}"


def _colorscale(name_or_scale: Any) -> list[tuple[float, tuple[int, int, int]]]:
    import plotly.colors as pc

    scale = pc.get_colorscale(name_or_scale) if isinstance(name_or_scale, str) else name_or_scale
    if not scale:
        scale = pc.get_colorscale("Viridis")
    out = []
    for position, colour in scale:
        colour = pc.hex_to_rgb(colour) if str(colour).startswith("#") else pc.unlabel_rgb(colour)
        out.append((float(position), tuple(int(round(c)) for c in colour)))
    return out


def _interpolate(scale, t: float) -> str:
    if not math.isfinite(t):
        return "#ffffff"
    t = min(1.0, max(0.0, t))
    for (p0, c0), (p1, c1) in zip(scale, scale[1:]):
        if t <= p1:
            f = 0.0 if p1 == p0 else (t - p0) / (p1 - p0)
            return "rgb({},{},{})".format(*(round(a + f * (b - a)) for a, b in zip(c0, c1)))
    return "rgb({},{},{})".format(*scale[-1][1])


class _Axis:
    """One axis of one subplot: its pixel span and the map from data to pixels."""

    def __init__(self, spec: dict, start: float, stop: float, values: list, reverse: bool = False):
        self.spec, self.start, self.stop, self.reverse = spec, start, stop, reverse
        self.log = spec.get("type") == "log"
        self.categorical = spec.get("type") == "category" or any(isinstance(v, str) for v in values)
        if self.categorical:
            order = list(spec.get("categoryarray") or [])
            for v in values:
                if str(v) not in order:
                    order.append(str(v))
            self.categories = order
            self.low, self.high = -0.5, len(order) - 0.5
        else:
            numbers = [float(v) for v in values if v is not None and math.isfinite(float(v))]
            numbers = [math.log10(v) for v in numbers if v > 0] if self.log else numbers
            low, high = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
            if spec.get("rangemode") == "tozero" and not self.log:
                low = min(low, 0.0)
            if spec.get("range") and not self.log:
                low, high = map(float, spec["range"])
            if high == low:
                low, high = low - 0.5, high + 0.5
            pad = 0.0 if spec.get("range") else 0.04 * (high - low)
            self.low, self.high = low - pad, high + pad

    def __call__(self, value: Any) -> float:
        if self.categorical:
            x = self.categories.index(str(value)) if str(value) in self.categories else float("nan")
        else:
            x = float(value)
            x = math.log10(x) if self.log and x > 0 else (float("nan") if self.log else x)
        f = (x - self.low) / (self.high - self.low)
        if self.reverse:
            f = 1 - f
        return self.start + f * (self.stop - self.start)

    def ticks(self) -> list[tuple[Any, str]]:
        spec = self.spec
        if spec.get("tickvals") is not None:
            text = spec.get("ticktext") or [_fmt(v) for v in spec["tickvals"]]
            return list(zip(spec["tickvals"], map(str, text)))
        if self.categorical:
            step = max(1, math.ceil(len(self.categories) / 80))  # at most ~80 labels
            return [(c, c) for c in self.categories[::step]]
        if self.log:
            decades = range(math.floor(self.low), math.ceil(self.high) + 1)
            return [(10.0 ** d, _fmt(10.0 ** d)) for d in decades if self.low <= d <= self.high]
        if spec.get("dtick") and not isinstance(spec.get("dtick"), str):
            step = float(spec["dtick"])
            first = math.ceil(self.low / step) * step
            values = [first + i * step for i in range(int((self.high - first) / step) + 1)]
        else:
            values = _nice_ticks(self.low, self.high)
        return [(v, _fmt(round(v, 10))) for v in values]


def _subplots(layout: dict, data: list[dict]) -> dict[tuple[str, str], tuple[dict, dict]]:
    pairs = {}
    for trace in data:
        xa, ya = trace.get("xaxis") or "x", trace.get("yaxis") or "y"
        pairs[(xa, ya)] = (layout.get(xa.replace("x", "xaxis", 1), {}) or {}, layout.get(ya.replace("y", "yaxis", 1), {}) or {})
    return pairs


def _plain_data(value: Any) -> Any:
    """Lists of plain numbers for numpy arrays and plotly's base64 typed arrays ({"dtype", "bdata"})."""
    import base64

    import numpy as np

    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
            if value.get("shape"):
                array = array.reshape([int(n) for n in str(value["shape"]).split(",")])
            return array.tolist()
        return {k: _plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_data(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_svg(fig: Any, width: Optional[int] = None, height: Optional[int] = None) -> str:
    """An SVG image of ``fig`` (a plotly Figure or its dict), see the module docstring."""
    spec = _plain_data(fig.to_dict() if hasattr(fig, "to_dict") else dict(fig))
    data, layout = list(spec.get("data", [])), dict(spec.get("layout", {}))
    width = int(width or layout.get("width") or WIDTH)
    height = int(height or layout.get("height") or 450)
    margin = {"t": 80, "l": 80, "r": 30, "b": 70, **(layout.get("margin") or {})}
    has_colorbar = any(t.get("type") == "heatmap" for t in data)
    legend_names = []
    for trace in data:
        if trace.get("type") in ("scatter", "bar") and trace.get("showlegend", True) is not False and trace.get("name"):
            if trace["name"] not in legend_names:
                legend_names.append(trace["name"])
    right = margin["r"] + (90 if has_colorbar else 0) + (150 if legend_names else 0)
    plot = (margin["l"], margin["t"], width - right, height - margin["b"])  # x0, y0, x1, y1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="{FONT}" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    title = layout.get("title", {})
    title = title.get("text") if isinstance(title, dict) else title
    if title:
        out.append(f'<text x="{plot[0]}" y="24" font-size="15">{_esc(_plain(title))}</text>')
    skipped = sorted({t.get("type", "?") for t in data if t.get("type", "scatter") not in DRAWN})
    coloraxes = {}
    for (xa, ya), (xspec, yspec) in _subplots(layout, data).items():
        traces = [t for t in data if (t.get("xaxis") or "x", t.get("yaxis") or "y") == (xa, ya)
                  and t.get("type", "scatter") in DRAWN]
        xd, yd = xspec.get("domain", [0, 1]), yspec.get("domain", [0, 1])
        x0 = plot[0] + xd[0] * (plot[2] - plot[0])
        x1 = plot[0] + xd[1] * (plot[2] - plot[0])
        y0 = plot[3] - yd[1] * (plot[3] - plot[1])
        y1 = plot[3] - yd[0] * (plot[3] - plot[1])
        xs, ys = [], []
        for t in traces:
            if t.get("type") == "heatmap":
                z = t.get("z") or [[]]
                xs += list(t["x"]) if t.get("x") is not None else [-0.5, len(z[0]) - 0.5]
                ys += list(t["y"]) if t.get("y") is not None else [-0.5, len(z) - 0.5]
            else:
                tx, ty = list(t.get("x") or []), list(t.get("y") or [])
                xs += tx
                ys += ty
                err = t.get("error_y") or {}
                if err.get("array") is not None and not isinstance(ty[0] if ty else "", str):
                    minus = err.get("arrayminus") if err.get("symmetric") is False else err["array"]
                    minus = minus if minus is not None else err["array"]
                    ys += [a + b for a, b in zip(ty, err["array"]) if a is not None and b is not None]
                    ys += [a - b for a, b in zip(ty, minus) if a is not None and b is not None]
                if t.get("type") == "bar":
                    ys.append(0.0)
        if layout.get("barmode") == "stack":  # the stacks' tops
            tops: dict = {}
            for t in traces:
                if t.get("type") == "bar":
                    for x, y in zip(t.get("x") or [], t.get("y") or []):
                        tops[str(x)] = tops.get(str(x), 0.0) + (y or 0.0)
            ys += list(tops.values())
        xaxis = _Axis(xspec, x0, x1, xs)
        yaxis = _Axis(yspec, y1, y0, ys, reverse=False)
        out.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" '
                   'fill="none" stroke="#ccc"/>')
        out += _draw_traces(traces, xaxis, yaxis, layout, coloraxes, (x0, y0, x1, y1))
        out += _draw_axes(xaxis, yaxis, xspec, yspec, (x0, y0, x1, y1))
    for annotation in layout.get("annotations", []) or []:  # subplot titles and notes
        text = _plain(annotation.get("text"))
        if not text or annotation.get("xref", "paper") != "paper" or annotation.get("yref", "paper") != "paper":
            continue
        ax = plot[0] + float(annotation.get("x", 0)) * (plot[2] - plot[0])
        ay = plot[3] - float(annotation.get("y", 1)) * (plot[3] - plot[1])
        anchor = {"left": "start", "right": "end"}.get(annotation.get("xanchor"), "middle")
        dy = -4 if annotation.get("yanchor") == "bottom" else 12 if annotation.get("yanchor") == "top" else 4
        out.append(f'<text x="{ax:.1f}" y="{ay + dy:.1f}" text-anchor="{anchor}" font-size="12">{_esc(text)}</text>')
    if legend_names:
        lx, ly = width - margin["r"] - 145 - (90 if has_colorbar else 0), plot[1]
        for i, name in enumerate(legend_names):
            trace = next(t for t in data if t.get("name") == name)
            colour = _trace_colour(trace, data.index(trace))
            dash = ' stroke-dasharray="6,3"' if (trace.get("line") or {}).get("dash") in ("dash", "dot", "dashdot") else ""
            out.append(f'<line x1="{lx}" y1="{ly + 16 * i}" x2="{lx + 20}" y2="{ly + 16 * i}" stroke="{colour}" '
                       f'stroke-width="3"{dash}/><text x="{lx + 26}" y="{ly + 16 * i + 4}">{_esc(_plain(name))}</text>')
    for k, (name, (scale, low, high, label)) in enumerate(coloraxes.items()):
        cx, cy0, cy1 = width - margin["r"] - 70, plot[1] + 10, plot[3] - 10
        steps = 40
        for s in range(steps):
            top = cy0 + (cy1 - cy0) * s / steps
            out.append(f'<rect x="{cx}" y="{top:.1f}" width="16" height="{(cy1 - cy0) / steps + 0.6:.1f}" '
                       f'fill="{_interpolate(scale, 1 - (s + 0.5) / steps)}"/>')
        for v in _nice_ticks(low, high, 5):
            ty = cy1 - (v - low) / (high - low) * (cy1 - cy0) if high > low else cy1
            out.append(f'<text x="{cx + 20}" y="{ty + 4:.1f}">{_esc(_fmt(round(v, 10)))}</text>')
        if label:
            out.append(f'<text x="{cx}" y="{cy0 - 6}">{_esc(label)}</text>')
    if skipped:
        out.append(f'<text x="4" y="{height - 4}" font-size="10" fill="#777">static image: trace types '
                   f'{_esc(", ".join(skipped))} not drawn (see the interactive figure)</text>')
    out.append("</svg>")
    return "\n".join(out)


def _trace_colour(trace: dict, index: int) -> str:
    for source in ((trace.get("line") or {}).get("color"), (trace.get("marker") or {}).get("color")):
        if isinstance(source, str):
            return source
    return _DEFAULT_COLORS[index % len(_DEFAULT_COLORS)]


def _draw_traces(traces, xaxis: _Axis, yaxis: _Axis, layout: dict, coloraxes: dict, box) -> list[str]:
    out = []
    bars = [t for t in traces if t.get("type") == "bar"]
    stacked = layout.get("barmode") == "stack"
    bases: dict = {}  # x -> height stacked so far
    for index, t in enumerate(traces):
        kind = t.get("type", "scatter")
        colour = _trace_colour(t, index)
        if kind == "heatmap":
            out += _heatmap(t, xaxis, yaxis, layout, coloraxes)
            continue
        xs, ys = list(t.get("x") or []), list(t.get("y") or [])
        err = t.get("error_y") or {}
        plus = err.get("array") if err.get("visible", True) is not False else None
        minus = (err.get("arrayminus") if err.get("symmetric") is False else plus) if plus is not None else None
        if kind == "bar":
            slot = 0 if stacked else bars.index(t)
            width = 0.8 if stacked else 0.8 / max(len(bars), 1)
            for i, (x, y) in enumerate(zip(xs, ys)):
                if y is None:
                    continue
                centre = xaxis(x)
                unit = abs(xaxis.stop - xaxis.start) / max(len(getattr(xaxis, "categories", [])) or 10, 1)
                left = centre + (-0.4 + slot * width) * unit
                below = bases.get(str(x), 0.0) if stacked else 0.0
                top, base = yaxis(below + y), yaxis(below)
                if stacked:
                    bases[str(x)] = below + y
                out.append(f'<rect x="{left:.1f}" y="{min(top, base):.1f}" width="{width * unit:.1f}" '
                           f'height="{abs(base - top):.1f}" fill="{colour}"/>')
                if plus is not None:
                    out.append(_error_bar(left + width * unit / 2, y, plus[i], minus[i], yaxis, colour))
            continue
        mode = t.get("mode") or "lines+markers"
        points = [(xaxis(x), yaxis(y)) for x, y in zip(xs, ys) if x is not None and y is not None]
        points = [(px, py) for px, py in points if math.isfinite(px) and math.isfinite(py)]
        dash = (t.get("line") or {}).get("dash")
        dash_attr = {"dash": ' stroke-dasharray="6,3"', "dot": ' stroke-dasharray="2,3"',
                     "dashdot": ' stroke-dasharray="6,3,2,3"'}.get(dash, "")
        if "lines" in mode and len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>')
        if "markers" in mode:
            out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{colour}"/>' for px, py in points]
        if plus is not None:
            for i, (x, y) in enumerate(zip(xs, ys)):
                if x is not None and y is not None and plus[i] is not None:
                    out.append(_error_bar(xaxis(x), y, plus[i], minus[i], yaxis, colour))
    return out


def _error_bar(px: float, y: float, plus: float, minus: float, yaxis: _Axis, colour: str) -> str:
    top, bottom = yaxis(y + plus), yaxis(y - (minus if minus is not None else plus))
    return (f'<path d="M{px:.1f},{top:.1f}V{bottom:.1f}M{px - 3:.1f},{top:.1f}H{px + 3:.1f}'
            f'M{px - 3:.1f},{bottom:.1f}H{px + 3:.1f}" stroke="{colour}" stroke-width="1" fill="none"/>')


def _heatmap(t: dict, xaxis: _Axis, yaxis: _Axis, layout: dict, coloraxes: dict) -> list[str]:
    z = [[(float(v) if v is not None else float("nan")) for v in row] for row in (t.get("z") or [])]
    if not z:
        return []
    axis_name = t.get("coloraxis")
    axis = layout.get(axis_name, {}) if axis_name else t
    values = [v for row in z for v in row if math.isfinite(v)]
    low = axis.get("cmin", t.get("zmin"))
    high = axis.get("cmax", t.get("zmax"))
    low = min(values) if low is None else low
    high = max(values) if high is None else high
    mid = axis.get("cmid", t.get("zmid"))
    if mid is not None:
        reach = max(abs(high - mid), abs(mid - low))
        low, high = mid - reach, mid + reach
    scale = _colorscale(axis.get("colorscale") or "Viridis")
    bar = axis.get("colorbar") or {}
    label = bar.get("title", {}).get("text") if isinstance(bar.get("title"), dict) else bar.get("title")
    coloraxes[axis_name or id(t)] = (scale, low, high, _plain(label))
    xs = list(t["x"]) if t.get("x") is not None else list(range(len(z[0])))
    ys = list(t["y"]) if t.get("y") is not None else list(range(len(z)))
    out = []
    for r, row in enumerate(z):
        for c, v in enumerate(row):
            left, right = _cell(xaxis, xs, c)
            top, bottom = _cell(yaxis, ys, r)
            colour = _interpolate(scale, (v - low) / (high - low) if high > low else 0.5)
            out.append(f'<rect x="{min(left, right):.2f}" y="{min(top, bottom):.2f}" width="{abs(right - left) + 0.3:.2f}" '
                       f'height="{abs(bottom - top) + 0.3:.2f}" fill="{colour}"/>')
    return out


def _cell(axis: _Axis, values: Sequence, i: int) -> tuple[float, float]:
    if axis.categorical:
        centre = axis(values[i])
        half = abs(axis(values[0]) - axis(values[1])) / 2 if len(values) > 1 else abs(axis.stop - axis.start) / 2
        return centre - half, centre + half
    v = float(values[i])
    return axis(v - 0.5), axis(v + 0.5)


def _draw_axes(xaxis: _Axis, yaxis: _Axis, xspec: dict, yspec: dict, box) -> list[str]:
    x0, y0, x1, y1 = box
    out = []
    x_ticks = [(value, text) for value, text in xaxis.ticks() if math.isfinite(xaxis(value))]
    rotate = xspec.get("tickangle") not in (None, 0) or (xaxis.categorical and len(x_ticks) > 12)
    size = 8 if len(x_ticks) > 30 else 10
    if xspec.get("showticklabels", True) is not False:
        for value, text in x_ticks:
            px = xaxis(value)
            if not x0 - 1 <= px <= x1 + 1:
                continue
            out.append(f'<line x1="{px:.1f}" y1="{y1}" x2="{px:.1f}" y2="{y1 + 4}" stroke="#444"/>')
            if rotate:
                out.append(f'<text transform="translate({px + 3:.1f},{y1 + 8}) rotate(-90)" text-anchor="end" '
                           f'font-size="{size}">{_esc(_plain(text)[:24])}</text>')
            else:
                out.append(f'<text x="{px:.1f}" y="{y1 + 16}" text-anchor="middle" font-size="{size}">{_esc(_plain(text))}</text>')
    for value, text in yaxis.ticks():
        py = yaxis(value)
        if not y0 - 1 <= py <= y1 + 1:
            continue
        out.append(f'<line x1="{x0 - 4}" y1="{py:.1f}" x2="{x0}" y2="{py:.1f}" stroke="#444"/>'
                   f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{_esc(_plain(text))}</text>')
    x_title = (xspec.get("title") or {}).get("text") if isinstance(xspec.get("title"), dict) else xspec.get("title")
    y_title = (yspec.get("title") or {}).get("text") if isinstance(yspec.get("title"), dict) else yspec.get("title")
    if x_title:
        below = y1 + (80 if rotate else 34)
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{below}" text-anchor="middle" font-size="12">{_esc(_plain(x_title))}</text>')
    if y_title:
        out.append(f'<text transform="translate({x0 - 48:.1f},{(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
                   f'font-size="12">{_esc(_plain(y_title))}</text>')
    return out


def use_in_notebook() -> None:
    """Display every plotly figure with both the interactive plotly JSON and a static SVG
    (:func:`to_svg`): Jupyter/VS Code show the interactive figure; an HTML export or GitHub, which
    cannot run plotly.js from a notebook, show the SVG."""
    import plotly.io as pio
    from plotly.io._base_renderers import MimetypeRenderer

    class _SvgRenderer(MimetypeRenderer):
        def to_mimebundle(self, fig_dict):
            return {"image/svg+xml": to_svg(fig_dict)}

    pio.renderers["drope_lens_svg"] = _SvgRenderer()
    pio.renderers.default = "plotly_mimetype+drope_lens_svg"
