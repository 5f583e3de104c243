"""Small SVG charts, drawn on the server: the job page works without JavaScript, renders at load,
and every mark carries its numbers (data-* attributes and a tooltip) for tests and readers.

Each chart is an <svg role="img"> with a title and a description; the page puts a table of the
same numbers beside it (the text equivalent)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from service.job_figures import Round, Step
from store.records import TrialPoint

WIDTH, HEIGHT = 480, 300
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 14, 44
# Marker shapes by stage, in the order stages first appear (colour says feasible or not).
SHAPES = ("circle", "square", "diamond", "triangle", "cross")


@dataclass(frozen=True)
class Scale:
    lo: float
    hi: float
    start: float  # pixels
    end: float
    log: bool = False

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def __call__(self, v: float) -> float:
        a, b = self._t(self.lo), self._t(self.hi)
        frac = 0.5 if b == a else (self._t(v) - a) / (b - a)
        return self.start + frac * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            return _log_ticks(self.lo, self.hi)
        return _linear_ticks(self.lo, self.hi)


def _linear_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    span = math.log10(hi / lo)  # decades: few ticks, so labels stay apart on a phone
    if span < 0.7:  # within a factor of 5, round numbers come from a linear grid
        return [v for v in _linear_ticks(lo, hi, 4) if v > 0]
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    mults: tuple[int, ...] = (1, 2, 5) if span <= 1.2 else (1, 3) if span <= 2.2 else (1,)
    ticks = [m * 10.0**d for d in decades for m in mults if lo <= m * 10.0**d <= hi * (1 + 1e-9)]
    return ticks or [lo, hi]


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10 or v == int(v):
        return f"{v:g}"
    return f"{v:.3g}"


def _n(v: float) -> str:
    return f"{v:.1f}"


def _open(chart_id: str, title: str, desc: str, kind: str, height: int = HEIGHT) -> list[str]:
    t, d = f"{chart_id}-title", f"{chart_id}-desc"
    return [
        f'<svg id="{chart_id}" class="chart" data-chart="{kind}" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-labelledby="{t} {d}" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{t}">{escape(title)}</title><desc id="{d}">{escape(desc)}</desc>',
    ]


def _axes(x: Scale, y: Scale, xlabel: str, ylabel: str, xfmt: str = "", yfmt: str = "") -> list[str]:
    out = ['<g class="axes">']
    for v in y.ticks():
        py = _n(y(v))
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py}" y2="{py}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{py}" text-anchor="end" '
                   f'dominant-baseline="middle">{fmt_tick(v)}{yfmt}</text>')
    for v in x.ticks():
        px = _n(x(v))
        out.append(f'<line class="grid" x1="{px}" x2="{px}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>')
        out.append(f'<text class="tick" x="{px}" y="{HEIGHT - BOTTOM + 16}" '
                   f'text-anchor="middle">{fmt_tick(v)}{xfmt}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" '
               f'y2="{HEIGHT - BOTTOM}"/>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>')
    out.append(f'<text class="label" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" '
               f'text-anchor="middle">{escape(xlabel)}</text>')
    mid = (TOP + HEIGHT - BOTTOM) / 2
    out.append(f'<text class="label" x="14" y="{mid}" text-anchor="middle" '
               f'transform="rotate(-90 14 {mid})">{escape(ylabel)}</text>')
    out.append("</g>")
    return out


def empty_chart(chart_id: str, title: str, message: str) -> Markup:
    out = _open(chart_id, title, message, "empty", 120)
    out.append(f'<text class="label" x="{WIDTH / 2}" y="64" text-anchor="middle">'
               f"{escape(message)}</text></svg>")
    return Markup("".join(out))


def _marker(shape: str, x: float, y: float, r: float, attrs: str) -> str:
    if shape == "square":
        return f'<rect x="{_n(x - r)}" y="{_n(y - r)}" width="{_n(2 * r)}" height="{_n(2 * r)}" {attrs}>'
    if shape == "diamond":
        d = f"M{_n(x)} {_n(y - r * 1.3)}L{_n(x + r * 1.3)} {_n(y)}L{_n(x)} {_n(y + r * 1.3)}L{_n(x - r * 1.3)} {_n(y)}Z"
        return f'<path d="{d}" {attrs}>'
    if shape == "triangle":
        d = f"M{_n(x)} {_n(y - r * 1.3)}L{_n(x + r * 1.2)} {_n(y + r)}L{_n(x - r * 1.2)} {_n(y + r)}Z"
        return f'<path d="{d}" {attrs}>'
    if shape == "cross":
        d = (f"M{_n(x - r)} {_n(y - r)}L{_n(x + r)} {_n(y + r)}M{_n(x - r)} {_n(y + r)}"
             f"L{_n(x + r)} {_n(y - r)}")
        return f'<path d="{d}" {attrs}>'
    return f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{r}" {attrs}>'


_CLOSE = {"circle": "</circle>", "square": "</rect>"}


def scatter(chart_id: str, points: Sequence[TrialPoint], front: Sequence[TrialPoint],
            stage_order: Sequence[str], reference: float | None, delta: float,
            subset_reference: float | None, y_floor: float | None) -> Markup:
    """Compression ratio (log x) against validation accuracy, one mark per trial; filled when
    feasible, hollow when not; the Pareto front ringed and joined; the δ line(s) dashed.
    Trials below `y_floor` are drawn on the bottom edge (class "clipped")."""
    title = "Every trial: compression ratio against validation accuracy"
    if not points:
        return empty_chart(chart_id, title, "No scored trials yet.")
    on_front = {p.number for p in front}
    ratios = [p.compression_ratio or 1.0 for p in points]
    accs = [p.val_accuracy or 0.0 for p in points]
    lines = [v - delta for v in (reference, subset_reference) if v is not None]
    y_lo = min([*accs, *lines]) if y_floor is None else max(min([*accs, *lines]), y_floor)
    y_hi = max([*accs, *(v for v in (reference, subset_reference) if v is not None)])
    pad = max((y_hi - y_lo) * 0.05, 0.002)
    x = Scale(min(1.0, min(ratios)), max(ratios) * 1.15, LEFT, WIDTH - RIGHT, log=True)
    y = Scale(y_lo - pad, y_hi + pad, HEIGHT - BOTTOM, TOP)
    feasible = sum(p.feasible for p in points)
    desc = (f"{len(points)} trials, {feasible} feasible; {len(front)} on the Pareto front; "
            f"accuracy limit {lines[0]:.4f} (reference minus δ {delta:g})" if lines
            else f"{len(points)} trials, {feasible} feasible; {len(front)} on the Pareto front")
    out = _open(chart_id, title, desc, "scatter")
    out += _axes(x, y, "compression ratio (×, log scale)", "validation accuracy", xfmt="×")
    for i, v in enumerate(lines):
        ly = _n(y(v))
        name = "delta" if i == 0 else "delta-subset"
        label = "reference − δ" if i == 0 else "subset reference − δ"
        out.append(f'<line class="delta" data-line="{name}" data-accuracy="{v!r}" x1="{LEFT}" '
                   f'x2="{WIDTH - RIGHT}" y1="{ly}" y2="{ly}"/>')
        out.append(f'<text class="delta-label" x="{WIDTH - RIGHT - 4}" y="{_n(y(v) - 4)}" '
                   f'text-anchor="end">{label}</text>')
    if front:
        path = " ".join(f"{_n(x(p.compression_ratio or 1.0))},"
                        f"{_n(min(y(p.val_accuracy or 0.0), HEIGHT - BOTTOM - 3))}" for p in front)
        out.append(f'<polyline class="front" points="{path}"/>')
    shapes = {s: SHAPES[i % len(SHAPES)] for i, s in enumerate(stage_order)}
    bottom = HEIGHT - BOTTOM - 3
    for p in sorted(points, key=lambda p: p.number in on_front):  # the front drawn on top
        ratio, acc = p.compression_ratio or 1.0, p.val_accuracy or 0.0
        py = y(acc)
        clipped = py > bottom
        cls = ["pt", "feasible" if p.feasible else "infeasible"]
        if p.number in on_front:
            cls.append("pareto")
        if clipped:
            cls.append("clipped")
        shape = shapes.get(p.stage, "circle")
        attrs = (f'class="{" ".join(cls)}" data-trial="{p.number}" data-ratio="{ratio!r}" '
                 f'data-accuracy="{acc!r}" data-feasible="{str(p.feasible).lower()}" '
                 f'data-stage="{escape(p.stage)}" data-round="{p.round}"')
        tip = (f"trial {p.number} ({p.stage}, round {p.round}): {ratio:.2f}×, accuracy {acc:.4f}, "
               f"drop {p.accuracy_drop or 0.0:.4f}, {'feasible' if p.feasible else 'infeasible'}"
               f"{', on the Pareto front' if p.number in on_front else ''}")
        r = 4.2 if p.number in on_front else 3.0
        out.append(_marker(shape, x(ratio), min(py, bottom), r, attrs)
                   + f"<title>{escape(tip)}</title>" + _CLOSE.get(shape, "</path>"))
    out.append("</svg>")
    return Markup("".join(out))


def convergence(chart_id: str, steps: Sequence[Step], last_number: int, axis_max: int,
                rounds: Sequence[Round], reported: tuple[int, float] | None) -> Markup:
    """Best feasible compression ratio against trial number (a step line up to the last trial
    done, on an axis to the last trial planned); rounds shaded."""
    title = "Convergence: best feasible compression ratio by trial"
    if not steps:
        return empty_chart(chart_id, title, "No feasible trial yet.")
    top = max([s.ratio for s in steps] + ([reported[1]] if reported else []))
    x = Scale(0, max(axis_max, last_number, steps[-1].number, 1), LEFT, WIDTH - RIGHT)
    y = Scale(0, top * 1.08, HEIGHT - BOTTOM, TOP)
    desc = (f"Best ratio {steps[-1].ratio:.2f}× at trial {steps[-1].number}, after "
            f"{len(steps)} improvements over {last_number + 1} trials")
    out = _open(chart_id, title, desc, "convergence")
    if len(rounds) > 1:
        label_every = max(1, math.ceil(len(rounds) / 12))
        for i, rd in enumerate(rounds):
            x0, x1 = x(rd.first - 0.5 if rd.first else 0), x(min(rd.last + 0.5, x.hi))
            out.append(f'<rect class="round{" odd" if i % 2 else ""}" data-round="{rd.number}" '
                       f'x="{_n(x0)}" y="{TOP}" width="{_n(max(x1 - x0, 0.5))}" '
                       f'height="{HEIGHT - BOTTOM - TOP}"><title>round {rd.number}: trials '
                       f"{rd.first}–{rd.last}</title></rect>")
            if i % label_every == 0:
                out.append(f'<text class="round-label" x="{_n(x0 + 2)}" y="{TOP + 10}">r{rd.number}</text>')
    out += _axes(x, y, "trial number", "best compression ratio (×)", yfmt="×")
    d = [f"M{_n(x(steps[0].number))} {_n(y(steps[0].ratio))}"]
    for s in steps[1:]:
        d.append(f"H{_n(x(s.number))}V{_n(y(s.ratio))}")
    d.append(f"H{_n(x(max(last_number, steps[-1].number)))}")
    out.append(f'<path class="best-line" d="{"".join(d)}"/>')
    for s in steps:
        out.append(f'<circle class="step" data-trial="{s.number}" data-ratio="{s.ratio!r}" '
                   f'data-stage="{escape(s.stage)}" data-round="{s.round}" cx="{_n(x(s.number))}" '
                   f'cy="{_n(y(s.ratio))}" r="2.6"><title>trial {s.number} ({escape(s.stage)}, round '
                   f"{s.round}): {s.ratio:.2f}×</title></circle>")
    if reported is not None:
        n, ratio = reported
        px, py = x(n), y(ratio)
        out.append(_marker("diamond", px, py, 5.0, f'class="reported" data-trial="{n}" '
                           f'data-ratio="{ratio!r}"')
                   + f"<title>the job's best: trial {n}, {ratio:.2f}×</title></path>")
    out.append("</svg>")
    return Markup("".join(out))


@dataclass(frozen=True)
class LayerBar:
    name: str
    parameters: int
    keep_ratio: float

    @property
    def kept(self) -> int:
        return round(self.parameters * self.keep_ratio)


def layers(chart_id: str, bars: Sequence[LayerBar]) -> Markup:
    """Per layer: its size (parameters, bar length relative to the largest layer) beside the best
    candidate's keep ratio (bar length = fraction kept, 0 to 100 %)."""
    title = "Per-layer keep ratio of the best candidate, beside each layer's size"
    if not bars:
        return empty_chart(chart_id, title, "No best candidate yet.")
    row, head = 42, 30
    height = head + row * len(bars) + 4
    name_x, size_x, size_w, keep_x = 100, 106, 118, 240
    keep_w = WIDTH - RIGHT - keep_x
    biggest = max(b.parameters for b in bars) or 1
    desc = "; ".join(f"{b.name}: {b.parameters:,} parameters, keeps {_pct(b.keep_ratio)}" for b in bars)
    out = _open(chart_id, title, desc, "layers", height)
    out.append(f'<text class="label" x="{size_x}" y="16">parameters</text>')
    out.append(f'<text class="label" x="{keep_x}" y="16">kept by the best</text>')
    out.append(f'<line class="grid" x1="{keep_x + keep_w}" x2="{keep_x + keep_w}" y1="{head - 6}" '
               f'y2="{height - 4}"/>')
    out.append(f'<line class="axis" x1="{keep_x}" x2="{keep_x}" y1="{head - 6}" y2="{height - 4}"/>')
    for i, b in enumerate(bars):
        top = head + i * row
        size_len = max(size_w * b.parameters / biggest, 1.0)
        keep_len = max(keep_w * min(max(b.keep_ratio, 0.0), 1.0), 1.0)
        out.append(f'<g class="layer" data-layer="{escape(b.name)}" data-parameters="{b.parameters}" '
                   f'data-keep-ratio="{b.keep_ratio!r}">')
        out.append(f'<text class="tick" x="{name_x}" y="{_n(top + 8)}" text-anchor="end" '
                   f'dominant-baseline="middle">{escape(_short(b.name, 14))}</text>')
        out.append(f'<rect class="size-bar" x="{size_x}" y="{_n(top)}" width="{_n(size_len)}" '
                   f'height="16"><title>{escape(b.name)}: {b.parameters:,} parameters</title></rect>')
        out.append(f'<text class="bar-label" x="{size_x}" y="{_n(top + 31)}">{b.parameters:,}</text>')
        out.append(f'<rect class="keep-bar" x="{keep_x}" y="{_n(top)}" width="{_n(keep_len)}" '
                   f'height="16"><title>{escape(b.name)}: keeps {_pct(b.keep_ratio)} '
                   f"({b.kept:,} of {b.parameters:,})</title></rect>")
        out.append(f'<text class="bar-label" x="{keep_x + 3}" y="{_n(top + 31)}">'
                   f"{_pct(b.keep_ratio)} ({b.kept:,})</text>")
        out.append("</g>")
    out.append("</svg>")
    return Markup("".join(out))


def _pct(v: float) -> str:
    return f"{v * 100:.3g} %"


def _short(name: str, n: int) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]
