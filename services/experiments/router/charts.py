"""Server-side SVG charts for the dashboard: no JavaScript library, nothing fetched.

    line_chart("ctr", "CTR per arm", [Series("fiited", xs, ys, lo, hi), ...])  -> "<svg ...>"
    bar_chart("chunks", "live chunks per ID", {"fiited": {"0": 10, "1": 200, ...}})

Every plotted series is a `<path class="series" data-series=NAME data-points=N>` (bands:
`class="band"`, bars: `class="bar"`), so a browser test can check what was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
W, H = 560, 260
ML, MR, MT, MB = 64, 16, 28, 36  # margins


@dataclass
class Series:
    name: str
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None


def _fmt(v: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * v:.1f}%"
    if unit == "B":
        for div, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if abs(v) >= div:
                return f"{v / div:.1f} {suffix}"
        return f"{v:.0f} B"
    return f"{v:.3g}"


def _frame(chart_id: str, title: str, y0: float, y1: float, x0: float, x1: float,
           unit: str, x_label: str) -> list[str]:
    parts = [f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
             f'width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">',
             f'<title>{escape(title)}</title>',
             f'<text x="{ML}" y="18" class="chart-title">{escape(title)}</text>',
             f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" '
             'fill="none" stroke="#ccc"/>']
    for t in np.linspace(y0, y1, 5):
        y = MT + (H - MT - MB) * (1 - (t - y0) / (y1 - y0))
        parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{ML - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                     f'{escape(_fmt(float(t), unit))}</text>')
    for t in np.linspace(x0, x1, 5):
        x = ML + (W - ML - MR) * (t - x0) / (x1 - x0)
        parts.append(f'<text x="{x:.1f}" y="{H - MB + 16}" text-anchor="middle" class="tick">'
                     f'{t:.0f}</text>')
    parts.append(f'<text x="{(ML + W - MR) / 2}" y="{H - 4}" text-anchor="middle" '
                 f'class="tick">{escape(x_label)}</text>')
    return parts


def _span(values: list[np.ndarray]) -> tuple[float, float]:
    vals = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if len(vals) == 0:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) + 1e-3), hi + 0.5 * (abs(hi) + 1e-3)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def line_chart(chart_id: str, title: str, series: list[Series], unit: str = "",
               x_label: str = "seconds since start") -> str:
    """Lines (one per series) with optional shaded [lo, hi] bands."""
    ys = [s.y for s in series] + [b for s in series for b in (s.lo, s.hi) if b is not None]
    y0, y1 = _span(ys)
    if unit in ("%", "B"):
        y0 = max(y0, 0.0)  # rates and sizes are never negative
    xs = [s.x for s in series if len(s.x)]
    x0, x1 = (float(min(x.min() for x in xs)), float(max(x.max() for x in xs))) if xs else (0, 1)
    x1 = x1 if x1 > x0 else x0 + 1
    parts = _frame(chart_id, title, y0, y1, x0, x1, unit, x_label)

    def px(x: np.ndarray) -> np.ndarray:
        return ML + (W - ML - MR) * (np.asarray(x, float) - x0) / (x1 - x0)

    def py(y: np.ndarray) -> np.ndarray:
        return MT + (H - MT - MB) * (1 - (np.asarray(y, float) - y0) / (y1 - y0))

    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        ok = np.isfinite(s.y)
        x, y = px(s.x[ok]), py(s.y[ok])
        if s.lo is not None and s.hi is not None and ok.any():
            top = " L".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, py(s.hi[ok]), strict=True))
            bottom = " L".join(f"{a:.1f},{b:.1f}" for a, b in
                               zip(x[::-1], py(s.lo[ok])[::-1], strict=True))
            parts.append(f'<path class="band" data-series="{escape(s.name)}" '
                         f'd="M{top} L{bottom} Z" fill="{color}" fill-opacity="0.15" '
                         'stroke="none"/>')
        d = " L".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True))
        parts.append(f'<path class="series" data-series="{escape(s.name)}" '
                     f'data-points="{int(ok.sum())}" d="M{d}" fill="none" stroke="{color}" '
                     'stroke-width="2"/>' if ok.any() else
                     f'<path class="series" data-series="{escape(s.name)}" data-points="0" '
                     'd=""/>')
        parts.append(f'<text x="{W - MR - 4}" y="{MT + 14 + 14 * i}" text-anchor="end" '
                     f'fill="{color}" class="legend">{escape(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart_id: str, title: str, groups: dict[str, dict[str, float]],
              x_label: str = "live chunks per ID") -> str:
    """Grouped bars: groups[name][category] = value (categories sorted numerically)."""
    cats = sorted({c for g in groups.values() for c in g}, key=lambda c: (len(c), c))
    vmax = max([v for g in groups.values() for v in g.values()] + [1.0])
    parts = _frame(chart_id, title, 0.0, vmax, 0.0, 1.0, "", x_label)[:4]
    slot = (W - ML - MR) / max(1, len(cats))
    bw = 0.8 * slot / max(1, len(groups))
    for gi, (name, vals) in enumerate(groups.items()):
        color = PALETTE[gi % len(PALETTE)]
        parts.append(f'<g class="series" data-series="{escape(name)}" '
                     f'data-points="{len(vals)}">')
        for ci, c in enumerate(cats):
            v = float(vals.get(c, 0.0))
            h = (H - MT - MB) * v / vmax
            x = ML + ci * slot + 0.1 * slot + gi * bw
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{H - MB - h:.1f}" '
                         f'width="{bw:.1f}" height="{h:.1f}" fill="{color}"><title>'
                         f'{escape(name)}: {escape(c)} chunks: {v:.0f}</title></rect>')
        parts.append("</g>")
        parts.append(f'<text x="{W - MR - 4}" y="{MT + 14 + 14 * gi}" text-anchor="end" '
                     f'fill="{color}" class="legend">{escape(name)}</text>')
    for ci, c in enumerate(cats):
        parts.append(f'<text x="{ML + (ci + 0.5) * slot:.1f}" y="{H - MB + 16}" '
                     f'text-anchor="middle" class="tick">{escape(c)}</text>')
    parts.append(f'<text x="{(ML + W - MR) / 2}" y="{H - 4}" text-anchor="middle" '
                 f'class="tick">{escape(x_label)}</text></svg>')
    return "".join(parts)
