"""A small SVG plot of a token's clock offset, rendered on the server (no script, no
third-party asset): each accepted code's feasible offsets as a bar, the current estimate as
a dot. Only numbers go into the markup."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 180, 62, 12, 12, 28


def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def offset_svg(history: Sequence[tuple[float, float, float]], now: float,
               estimate: float) -> str:
    """`history`: (true time, lowest, highest offset) per kept observation."""
    points = [(t, lo, hi) for t, lo, hi in history
              if all(math.isfinite(v) for v in (t, lo, hi))]
    if not math.isfinite(estimate):
        estimate = 0.0
    times = [t for t, _, _ in points] + [now]
    values = [v for _, lo, hi in points for v in (lo, hi)] + [estimate, 0.0]
    t0, t1 = min(times), max(times)
    if t1 - t0 < 1:
        t0 -= 30
        t1 += 30
    v0, v1 = min(values), max(values)
    margin = max((v1 - v0) * 0.1, 1.0)
    v0, v1 = v0 - margin, v1 + margin

    def x(t: float) -> float:
        return PAD_L + (t - t0) / (t1 - t0) * (W - PAD_L - PAD_R)

    def y(v: float) -> float:
        return PAD_T + (v1 - v) / (v1 - v0) * (H - PAD_T - PAD_B)

    out = [f'<svg class="plot" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="clock offset history" xmlns="http://www.w3.org/2000/svg">',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" '
           f'height="{H - PAD_T - PAD_B}" class="plot-bg"/>']
    for v in (v0 + margin, (v0 + v1) / 2, v1 - margin):
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   'class="plot-grid"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end" '
                   f'class="plot-label">{v:+.1f} s</text>')
    if v0 < 0 < v1:
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
                   'class="plot-zero"/>')
    for t, lo, hi in points:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y(hi):.1f}" '
                   f'y2="{y(lo) + 0.01:.1f}" class="plot-obs"/>')
    if points:
        last_t = points[-1][0]
        out.append(f'<line x1="{x(last_t):.1f}" x2="{x(now):.1f}" '
                   f'y1="{y((points[-1][1] + points[-1][2]) / 2):.1f}" y2="{y(estimate):.1f}" '
                   'class="plot-line"/>')
    out.append(f'<circle cx="{x(now):.1f}" cy="{y(estimate):.1f}" r="4" class="plot-now"/>')
    out.append(f'<text x="{PAD_L}" y="{H - 8}" class="plot-label">{_fmt_time(t0)}</text>')
    out.append(f'<text x="{W - PAD_R}" y="{H - 8}" text-anchor="end" '
               f'class="plot-label">now</text>')
    out.append("</svg>")
    return "".join(out)
