"""Small hand-written SVG charts for the HTML report.

The report must be one self-contained file that opens offline, so charts are plain inline
SVG strings built here rather than a plotting library (no JavaScript, no fonts, no images
to fetch). Every label that comes from data (stage names, drop reasons, domains) is escaped:
a run's data is untrusted text. Sizes are in CSS pixels; text widths are estimated from the
character count, which is good enough for the labels a run produces.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

# Colour-blind-friendly palette (Okabe-Ito, then Tableau-like extras).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#7f7f7f",
           "#8c564b", "#17becf", "#bcbd22", "#9467bd"]
KEPT = "#4c9a5f"
CHAR_W = 6.6  # approximate width of one 12px sans-serif character


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(v: float | int | None) -> str:
    """A number as people read it: 1,234 for integers, 4 significant digits otherwise."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    if v == 0:
        return "0"
    if abs(v) >= 1e9 or abs(v) < 1e-3:
        return f"{v:.3g}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _cut(label: str, n: int) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}">'
            + "".join(body) + "</svg>")


def hbar(rows: Sequence[tuple[str, float, str]], *, width: int = 640, label: str = "bar chart",
         bar_color: str = PALETTE[0]) -> str:
    """Horizontal bars: one row per (label, value, value text), scaled to the largest value."""
    if not rows:
        return ""
    lw = min(220, max(CHAR_W * len(_cut(r[0], 30)) for r in rows) + 10)
    vw = max(CHAR_W * len(r[2]) for r in rows) + 10
    bw = max(60.0, width - lw - vw)
    top = max((r[1] for r in rows), default=0) or 1
    rh, body = 22, []
    for i, (name, value, text) in enumerate(rows):
        y = i * rh
        w = max(0.0, value) / top * bw
        body.append(f'<g><title>{esc(name)}: {esc(text)}</title>'
                    f'<text x="{lw - 6:.0f}" y="{y + 15}" text-anchor="end" class="lbl">{esc(_cut(name, 30))}</text>'
                    f'<rect x="{lw:.0f}" y="{y + 3}" width="{w:.1f}" height="{rh - 6}" rx="2" fill="{bar_color}"/>'
                    f'<text x="{lw + w + 5:.1f}" y="{y + 15}" class="val">{esc(text)}</text></g>')
    return _svg(width, len(rows) * rh + 4, body, label)


def stacked_hbar(rows: Sequence[tuple[str, Sequence[tuple[str, float]]]], *, width: int = 720,
                 label: str = "stacked bar chart", normalize: bool = True, colors: dict[str, str] | None = None,
                 total_text: Sequence[str] | None = None) -> str:
    """One stacked bar per row of (segment, value); with ``normalize`` each bar is 100%.

    Segments share colours across rows (``colors`` may pin some, e.g. "kept" in green) and a
    legend under the chart names them, so a reason has the same colour in every bar."""
    rows = [(n, [(s, v) for s, v in segs if v > 0]) for n, segs in rows]
    rows = [r for r in rows if r[1]]
    if not rows:
        return ""
    pinned = dict(colors or {})
    order: list[str] = []
    for _, segs in rows:
        order += [s for s, _ in segs if s not in order]
    cmap = {s: pinned.get(s) or color(i) for i, s in enumerate([s for s in order if s not in pinned])}
    cmap.update({s: c for s, c in pinned.items()})
    lw = min(220, max(CHAR_W * len(_cut(n, 30)) for n, _ in rows) + 10)
    tw = max((CHAR_W * len(t) for t in total_text or []), default=0) + 10
    bw = max(80.0, width - lw - tw)
    top = max(sum(v for _, v in segs) for _, segs in rows) or 1
    rh, body = 24, []
    for i, (name, segs) in enumerate(rows):
        y, x = i * rh, lw
        total = sum(v for _, v in segs) or 1
        body.append(f'<text x="{lw - 6:.0f}" y="{y + 16}" text-anchor="end" class="lbl">{esc(_cut(name, 30))}'
                    f'<title>{esc(name)}</title></text>')
        for seg, v in segs:
            w = v / (total if normalize else top) * bw
            share = v / total
            body.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{rh - 6}" fill="{cmap[seg]}">'
                        f'<title>{esc(name)} · {esc(seg)}: {esc(fmt(v))} ({share:.1%})</title></rect>')
            if w > CHAR_W * 5 + 4:
                body.append(f'<text x="{x + 3:.1f}" y="{y + 16}" class="seg">{share:.0%}</text>')
            x += w
        if total_text:
            body.append(f'<text x="{x + 5:.1f}" y="{y + 16}" class="val">{esc(total_text[i])}</text>')
    # legend
    ly, lx = len(rows) * rh + 10, 0.0
    for seg in order:
        item = CHAR_W * len(_cut(seg, 34)) + 24
        if lx + item > width:
            lx, ly = 0.0, ly + 18
        body.append(f'<rect x="{lx:.0f}" y="{ly}" width="11" height="11" rx="2" fill="{cmap[seg]}"/>'
                    f'<text x="{lx + 15:.0f}" y="{ly + 10}" class="lbl">{esc(_cut(seg, 34))}</text>')
        lx += item
    return _svg(width, ly + 18, body, label)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + k * step, 12) for k in range(int((hi - first) / step + 1e-9) + 1)]


def histogram(edges: Sequence[float], counts: Sequence[int], *, markers: Sequence[dict] = (), below: int = 0,
              above: int = 0, xlabel: str = "", approximate: bool = False, width: int = 600, height: int = 230,
              label: str = "histogram") -> str:
    """Vertical bars over ``edges`` (n+1 floats) with labelled vertical marker lines.

    ``markers`` are dicts ``{x, label, kind}``: kind ``threshold`` (a filter rule: solid, labelled)
    or ``cutoff`` (a bucket cut-off: dashed, labelled only when there are few, else on hover).
    Values under/over a declared range (``below``/``above``) get their own hatched bars at the
    sides. The x range grows to show markers that fall outside the histogram."""
    if not edges or len(edges) != len(counts) + 1:
        return ""
    lo, hi = float(edges[0]), float(edges[-1])
    xs = [float(m["x"]) for m in markers if m.get("x") is not None and math.isfinite(float(m["x"]))]
    span = (hi - lo) or 1.0
    dlo = min([lo] + [x for x in xs if x >= lo - span])
    dhi = max([hi] + [x for x in xs if x <= hi + span])
    if dhi <= dlo:
        dlo, dhi = dlo - 0.5, dhi + 0.5
    ml, mr, mt, mb = 46, 16, 42, 38
    side = 26 if (below or above) else 0
    pw, ph = width - ml - mr - 2 * side, height - mt - mb
    x0 = ml + side
    top = max([*counts, below, above, 1])

    def sx(v: float) -> float:
        return x0 + (v - dlo) / (dhi - dlo) * pw

    def sy(c: float) -> float:
        return mt + ph - c / top * ph

    body = [f'<line x1="{x0}" y1="{mt + ph}" x2="{x0 + pw}" y2="{mt + ph}" class="axis"/>',
            f'<line x1="{x0}" y1="{mt}" x2="{x0}" y2="{mt + ph}" class="axis"/>']
    for c in sorted({0, top, round(top / 2)}):
        body.append(f'<text x="{x0 - 5}" y="{sy(c) + 4:.1f}" text-anchor="end" class="tick">{c:,}</text>'
                    f'<line x1="{x0}" y1="{sy(c):.1f}" x2="{x0 + pw}" y2="{sy(c):.1f}" class="grid"/>')
    fill = "#9db7d5" if approximate else PALETTE[0]
    for i, c in enumerate(counts):
        a, b = sx(float(edges[i])), sx(float(edges[i + 1]))
        body.append(f'<rect x="{a + 0.5:.1f}" y="{sy(c):.1f}" width="{max(0.5, b - a - 1):.1f}" '
                    f'height="{mt + ph - sy(c):.1f}" fill="{fill}"><title>[{esc(fmt(float(edges[i])))}, '
                    f'{esc(fmt(float(edges[i + 1])))}{"]" if i == len(counts) - 1 else ")"}: {c:,}</title></rect>')
    for n, x, text in ((below, ml, "below"), (above, x0 + pw + 4, "above")):
        if side and n:
            body.append(f'<rect x="{x}" y="{sy(n):.1f}" width="{side - 6}" height="{mt + ph - sy(n):.1f}" '
                        f'fill="url(#hatch)" stroke="#888"><title>{text} the declared range: {n:,}</title></rect>')
    if side:
        body.insert(0, '<defs><pattern id="hatch" width="5" height="5" patternUnits="userSpaceOnUse" '
                    'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="5" stroke="#888" '
                    'stroke-width="2"/></pattern></defs>')
    for t in _ticks(dlo, dhi):
        body.append(f'<text x="{sx(t):.1f}" y="{mt + ph + 15}" text-anchor="middle" class="tick">{esc(fmt(t))}</text>')
    if xlabel:
        body.append(f'<text x="{x0 + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" class="lbl">{esc(xlabel)}'
                    + (" (approximate counts)" if approximate else "") + "</text>")
    cutoffs = [m for m in markers if m.get("kind") == "cutoff"]
    label_cutoffs = len(cutoffs) <= 4
    slot = 0
    for m in markers:
        x = m.get("x")
        if x is None or not math.isfinite(float(x)) or not dlo <= float(x) <= dhi:
            continue
        px, kind = sx(float(x)), m.get("kind", "threshold")
        title = f'<title>{esc(m.get("label", ""))}</title>'
        if kind == "cutoff":
            body.append(f'<line x1="{px:.1f}" y1="{mt}" x2="{px:.1f}" y2="{mt + ph}" class="cutoff">{title}</line>')
            if not label_cutoffs:
                continue
        else:
            body.append(f'<line x1="{px:.1f}" y1="{mt - 6}" x2="{px:.1f}" y2="{mt + ph}" class="threshold">{title}</line>')
        text = _cut(str(m.get("label", "")), 28)
        anchor = "end" if px > x0 + pw * 0.6 else "start"
        dx = -3 if anchor == "end" else 3
        body.append(f'<text x="{px + dx:.1f}" y="{mt - 26 + 12 * (slot % 2)}" text-anchor="{anchor}" '
                    f'class="mark mk-{esc(kind)}">{esc(text)}</text>')
        slot += 1
    return _svg(width, height, body, label)


__all__ = ["color", "esc", "fmt", "hbar", "histogram", "stacked_hbar"]
