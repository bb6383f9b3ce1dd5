"""Hand-written SVG charts for the bench report (no matplotlib needed): line charts with
linear or log axes, and grouped bar charts.  Stdlib only."""

import math
from xml.sax.saxutils import escape

PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f']
# one colour per bench mode in every chart
MODE_COLORS = {'stock': '#1f77b4', 'stock-nopipe': '#d62728', 'mitogen': '#2ca02c', 'spindle': '#ff7f0e'}


def _color(name, i):
    for mode, c in MODE_COLORS.items():
        if name == mode or str(name).startswith(mode + ' '):
            return c
    return PALETTE[(i + 4) % len(PALETTE)]


W, H = 780, 420
ML, MR, MT, MB = 80, 210, 40, 60  # margins (legend on the right)


def _fmt(v):
    if v == 0:
        return '0'
    a = abs(v)
    if a >= 1000:
        return '%.0fk' % (v / 1000.0) if a >= 10000 else '%.1fk' % (v / 1000.0)
    if a >= 10 or float(v).is_integer():
        return '%.0f' % v
    if a >= 1:
        return '%.1f' % v
    return '%.2g' % v


def _ticks(lo, hi, log):
    if log:
        out = []
        e = math.floor(math.log10(lo))
        while 10**e <= hi * 1.0001:
            for m in (1, 2, 5):
                v = m * 10**e
                if lo / 1.0001 <= v <= hi * 1.0001:
                    out.append(v)
            e += 1
        return out or [lo, hi]
    span = hi - lo or 1.0
    step = 10 ** math.floor(math.log10(span / 5.0))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= 6:
            step *= m
            break
    v = math.ceil(lo / step) * step
    out = []
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


class _Axis(object):
    def __init__(self, lo, hi, log, a, b):
        if log:
            lo = max(lo, 1e-9)
            hi = max(hi, lo * 1.0001)
        elif hi <= lo:
            hi = lo + 1.0
        self.lo, self.hi, self.log, self.a, self.b = lo, hi, log, a, b

    def __call__(self, v):
        if self.log:
            v = max(v, self.lo)
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.a + f * (self.b - self.a)


def _frame(title, xlabel, ylabel):
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
        'font-family="sans-serif" font-size="12">' % (W, H, W, H),
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="%d" y="22" font-size="15" text-anchor="middle">%s</text>'
        % ((ML + W - MR) // 2, escape(title)),
        '<text x="%d" y="%d" text-anchor="middle">%s</text>' % ((ML + W - MR) // 2, H - 15, escape(xlabel)),
        '<text x="18" y="%d" text-anchor="middle" transform="rotate(-90 18 %d)">%s</text>'
        % ((MT + H - MB) // 2, (MT + H - MB) // 2, escape(ylabel)),
    ]
    return out


def _legend(out, names):
    for i, name in enumerate(names):
        y = MT + 10 + 20 * i
        c = _color(name, i)
        out.append('<rect x="%d" y="%d" width="14" height="10" fill="%s"/>' % (W - MR + 15, y - 9, c))
        out.append('<text x="%d" y="%d">%s</text>' % (W - MR + 35, y, escape(str(name))))


def line_chart(path, series, title, xlabel, ylabel, logx=False, logy=False, dashed=(), markers_only=()):
    """series: {name: [(x, y), ...]}; points with y None are left out.  Series named in
    markers_only are drawn as points without a line (a scatter).  Writes an SVG."""
    pts = [(x, y) for s in series.values() for x, y in s if y is not None]
    if not pts:
        pts = [(1, 1)]
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    ylo = min(ys) if logy else min(0.0, min(ys))
    xa = _Axis(min(xs), max(xs), logx, ML, W - MR)
    ya = _Axis(ylo if not logy else min(ys) / 1.2, max(ys) * (1.2 if logy else 1.08), logy, H - MB, MT)
    out = _frame(title, xlabel, ylabel)
    for t in _ticks(xa.lo, xa.hi, logx):
        X = xa(t)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (X, MT, X, H - MB))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (X, H - MB + 16, _fmt(t)))
    for t in _ticks(ya.lo, ya.hi, logy):
        Y = ya(t)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (ML, Y, W - MR, Y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (ML - 6, Y + 4, _fmt(t)))
    out.append(
        '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>'
        % (ML, MT, W - MR - ML, H - MB - MT)
    )
    for i, (name, s) in enumerate(series.items()):
        c = _color(name, i)
        p = sorted((x, y) for x, y in s if y is not None)
        if not p:
            continue
        dash = ' stroke-dasharray="6 4"' if name in dashed else ''
        if name not in markers_only:
            out.append(
                '<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>'
                % (c, dash, ' '.join('%.1f,%.1f' % (xa(x), ya(y)) for x, y in p))
            )
        for x, y in p:
            out.append(
                '<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s: %s, %s</title></circle>'
                % (xa(x), ya(y), c, escape(str(name)), _fmt(x), _fmt(y))
            )
    _legend(out, list(series.keys()))
    out.append('</svg>')
    with open(path, 'w') as f:
        f.write('\n'.join(out) + '\n')


def bar_chart(path, groups, series_names, values, title, ylabel, logy=False):
    """groups: x categories; values[(group, series)] = number or None.  Writes an SVG."""
    vals = [v for v in values.values() if v is not None and (v > 0 or not logy)]
    if not vals:
        vals = [1.0]
    hi = max(vals)
    ya = _Axis(min(vals) / 2 if logy else 0.0, hi * (1.5 if logy else 1.1), logy, H - MB, MT)
    out = _frame(title, '', ylabel)
    for t in _ticks(ya.lo, ya.hi, logy):
        Y = ya(t)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (ML, Y, W - MR, Y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (ML - 6, Y + 4, _fmt(t)))
    n = max(1, len(groups))
    gw = (W - MR - ML) / float(n)
    bw = gw * 0.8 / max(1, len(series_names))
    for gi, g in enumerate(groups):
        x0 = ML + gi * gw + gw * 0.1
        out.append(
            '<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
            % (ML + gi * gw + gw / 2, H - MB + 16, escape(str(g)))
        )
        for si, s in enumerate(series_names):
            v = values.get((g, s))
            if v is None or (logy and v <= 0):
                continue
            y = ya(v)
            out.append(
                '<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>'
                % (
                    x0 + si * bw,
                    y,
                    bw * 0.95,
                    max(0.5, H - MB - y),
                    _color(s, si),
                    escape(str(g)),
                    escape(str(s)),
                    _fmt(v),
                )
            )
    out.append(
        '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>'
        % (ML, MT, W - MR - ML, H - MB - MT)
    )
    _legend(out, series_names)
    out.append('</svg>')
    with open(path, 'w') as f:
        f.write('\n'.join(out) + '\n')
