"""Colour scales of head maps (:func:`colour_scale`): how a map's values become colours,
and the colour bar's ticks that tell the true values.

Scores of real models are heavy-tailed: on SmolLM2-135M the TR map spans 0.003 to 87 with
its median head at 0.57, so a linear scale leaves ~90% of the heads in the lowest tenth of
the colours (white). Scales:

- ``"linear"``: colour proportional to the value, from the map's minimum to its maximum
  (diverging maps: symmetric around 0).
- ``"symlog"``: colour by ``sign(x) · log10(1 + |x| / c)`` with ``c`` the 25th percentile
  of the map's non-zero ``|x|``: linear near 0, logarithmic beyond, so every order of
  magnitude gets its own colours and signs stay apart. Chosen over percentile clipping
  because clipping at the 98th percentile still leaves the median TR head at 2% of the
  range (0.57 of 28.8); symlog puts it near the middle.
- ``"rank"``: colour by rank (a head's percentile within the map; signed maps rank
  negative and positive heads apart), so colours are spread evenly whatever the values.
- ``"auto"`` (default): ``"linear"`` where a linear scale already spreads the heads (fewer
  than half in its lowest tenth), else ``"symlog"``.

The colour bar of a transformed scale carries ticks at real values (``tickvals`` in the
transformed space, ``ticktext`` the values), so it reads in the score's own units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

Scale = Literal["auto", "linear", "symlog", "rank"]
SCALES = ("auto", "linear", "symlog", "rank")
#: ``"auto"`` picks ``"symlog"`` when more than this share of the heads falls in the lowest
#: tenth of a linear scale.
CROWDED_SHARE = 0.5
#: Colour of heads that were not scored (NaN): the plot background behind them.
NAN_COLOUR = "#bdbdbd"


@dataclass(frozen=True)
class ColourScale:
    """A map's colours: the values to colour (``z``) and the trace's colour settings.

    Attributes:
        kind: the scale used (``"linear"``, ``"symlog"`` or ``"rank"``; never ``"auto"``).
        z: the coloured values (the raw values for ``"linear"``), NaN where not scored.
        zmin, zmax, zmid: the colour range (``zmid`` 0 for diverging maps, else None).
        colorscale: Plotly's name, ``"RdBu"`` (diverging) or ``"Blues"``.
        tickvals, ticktext: colour-bar ticks at real values (None: Plotly's own ticks).
        note: how the colours were made, for a caption (empty for linear).
        constant: ``c`` of the symlog scale (None for the others).
    """

    kind: str
    z: np.ndarray
    zmin: float
    zmax: float
    zmid: float | None
    colorscale: str
    tickvals: list[float] | None = None
    ticktext: list[str] | None = None
    note: str = ""
    constant: float | None = None

    def trace_kwargs(self) -> dict:
        """The ``go.Heatmap`` keyword arguments of the colours (not ``z``)."""
        out = dict(colorscale=self.colorscale, zmin=self.zmin, zmax=self.zmax)
        if self.zmid is not None:
            out["zmid"] = self.zmid
        return out


def colour_scale(
    values: np.ndarray,
    *,
    scale: Scale = "auto",
    diverging: bool | None = None,
    reference: np.ndarray | None = None,
) -> ColourScale:
    """The colours of a ``[layer, head]`` map of ``values``.

    Args:
        values: the map's values (NaN where not scored).
        scale: ``"auto"``, ``"linear"``, ``"symlog"`` or ``"rank"`` (see the module).
        diverging: ``RdBu`` centred at 0 (default: when the values have a negative one),
            else ``Blues``.
        reference: values that fix the scale's kind, range and ``c`` (e.g. every map of a
            figure with one shared scale); default ``values``.

    Returns:
        A :class:`ColourScale`.

    Example::

        colour_scale(np.array([[0.1, 0.2], [0.3, 400.0]])).kind  # "symlog"
    """
    check_scale(scale)
    z = np.asarray(values, dtype=float)
    ref = z if reference is None else np.asarray(reference, dtype=float)
    finite = ref[np.isfinite(ref)]
    signed = (bool(finite.size) and float(finite.min()) < 0) if diverging is None else diverging
    kind = scale if scale != "auto" else ("symlog" if crowded(finite, signed) else "linear")
    if kind == "symlog" and not np.any(finite != 0):
        kind = "linear"
    if kind == "linear":
        return _linear(z, finite, signed)
    if kind == "symlog":
        return _symlog(z, finite, signed)
    return _rank(z, finite, signed)


def check_scale(scale: object) -> None:
    """Raise ValueError naming ``scale`` unless it is one of :data:`SCALES`.

    Example::

        check_scale("symlog")  # fine; check_scale("log") raises
    """
    if scale not in SCALES:
        raise ValueError(f"scale: use one of {', '.join(map(repr, SCALES))}, got {scale!r}.")


def crowded(finite: np.ndarray, signed: bool) -> bool:
    """Whether a linear scale would put more than :data:`CROWDED_SHARE` of the heads in
    its lowest tenth (near 0 for a diverging map).

    Example::

        crowded(np.array([0.1, 0.2, 0.3, 400.0]), signed=False)  # True
    """
    if finite.size < 2:
        return False
    if signed:
        top = float(np.abs(finite).max())
        position = np.abs(finite) / top if top > 0 else np.zeros_like(finite)
    else:
        low, high = float(finite.min()), float(finite.max())
        position = (finite - low) / (high - low) if high > low else np.ones_like(finite)
    return float((position < 0.1).mean()) > CROWDED_SHARE


def tick_label(value: float) -> str:
    """A colour-bar tick: 3 significant digits, plain below 100 000.

    Example::

        tick_label(0.012345)  # "0.0123"
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if abs(value) >= 1e5:
        return f"{value:.2e}".replace("e+0", "e").replace("e+", "e")
    return f"{float(f'{value:.3g}'):g}" if abs(value) >= 1e-4 else f"{value:.1e}"


def _linear(z: np.ndarray, finite: np.ndarray, signed: bool) -> ColourScale:
    if signed:
        m = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        return ColourScale("linear", z, -m, m, 0.0, "RdBu")
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 1.0
    return ColourScale("linear", z, low, high if high > low else low + 1.0, None, "Blues")


def _symlog(z: np.ndarray, finite: np.ndarray, signed: bool) -> ColourScale:
    magnitude = np.abs(finite[finite != 0])
    c = float(np.percentile(magnitude, 25))

    def forward(x):
        return np.sign(x) * np.log10(1.0 + np.abs(x) / c)

    top = float(np.abs(finite).max())
    if signed:
        zmin, zmax, zmid = -float(forward(top)), float(forward(top)), 0.0
        low, high = -top, top
    else:
        low, high = float(finite.min()), float(finite.max())
        zmin, zmax, zmid = float(forward(low)), float(forward(high)), None
    ticks = _symlog_ticks(low, high, c)
    positions = [float(forward(v)) for v in ticks]
    ticks, positions = _thin(ticks, positions, zmax - zmin)
    with np.errstate(invalid="ignore"):
        coloured = forward(z)
    note = f"symlog scale, linear below {tick_label(c)} and logarithmic above"
    return ColourScale(
        "symlog",
        coloured,
        zmin,
        zmax if zmax > zmin else zmin + 1.0,
        zmid,
        "RdBu" if signed else "Blues",
        positions,
        [tick_label(v) for v in ticks],
        note,
        c,
    )


def _symlog_ticks(low: float, high: float, c: float) -> list[float]:
    """Real values to tick: 0, powers of ten (and 2x, 5x when few) from about ``c`` up,
    with both signs inside ``[low, high]``, and the extremes."""
    top = max(abs(low), abs(high))
    first = math.floor(math.log10(c)) if c > 0 else 0
    last = math.floor(math.log10(top)) if top > 0 else 0
    decades = [10.0**e for e in range(first, last + 1)]
    if len(decades) < 4:
        decades = sorted({m * d for d in decades for m in (1, 2, 5)})
    magnitudes = [d for d in decades if d <= top]
    ticks = {0.0} if low <= 0 <= high else set()
    ticks |= {v for d in magnitudes for v in (d, -d) if low <= v <= high}
    ticks |= {low, high}
    return sorted(ticks)


#: Least distance between two colour-bar ticks, as a share of the bar (room for labels on
#: the narrow horizontal bars under faceted maps).
TICK_SPACING = 0.1


def _thin(ticks: list[float], positions: list[float], span: float) -> tuple[list, list]:
    """Drop ticks closer than :data:`TICK_SPACING` of the bar to a kept one, keeping first
    the largest magnitude (the top head's value), then 0, powers of ten, their 2x and 5x,
    and last the other extreme."""
    top = max(abs(t) for t in ticks)

    def priority(i: int) -> tuple:
        value = abs(ticks[i])
        if value == top:
            return (0, 0.0)
        if value == 0:
            return (1, 0.0)
        exponent = math.log10(value)
        return (2 if abs(exponent - round(exponent)) < 1e-9 else 3, -value)

    kept: list[int] = []
    for i in sorted(range(len(ticks)), key=priority):
        if all(abs(positions[i] - positions[j]) >= TICK_SPACING * span for j in kept):
            kept.append(i)
    kept.sort()
    return [ticks[i] for i in kept], [positions[i] for i in kept]


def _rank(z: np.ndarray, finite: np.ndarray, signed: bool) -> ColourScale:
    coloured = np.full(z.shape, np.nan)
    ok = np.isfinite(z)
    if signed:
        for sign in (1.0, -1.0):
            part = ok & (np.sign(z) == sign)
            coloured[part] = sign * _percentile(np.abs(z[part]))
        coloured[ok & (z == 0)] = 0.0
        ticks = [-1.0, -0.5, 0.0, 0.5, 1.0]
        negatives, positives = finite[finite < 0], finite[finite > 0]
        labels = [
            _quantile(negatives, 0.0),
            _quantile(negatives, 0.5),
            "0",
            _quantile(positives, 0.5),
            _quantile(positives, 1.0),
        ]
        return ColourScale(
            "rank", coloured, -1.0, 1.0, 0.0, "RdBu", ticks, labels, _RANK_NOTE + _SIGNED_NOTE
        )
    coloured[ok] = _percentile(z[ok])
    ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
    labels = [_quantile(finite, q) for q in ticks]
    return ColourScale("rank", coloured, 0.0, 1.0, None, "Blues", ticks, labels, _RANK_NOTE)


_RANK_NOTE = "rank scale, colour by a head's rank within the map"
_SIGNED_NOTE = " (negative and positive heads ranked apart)"


def _percentile(values: np.ndarray) -> np.ndarray:
    """Each value's rank as a position in [0, 1] (ties share the mean position)."""
    if values.size <= 1:
        return np.ones_like(values)
    ranks = pd.Series(values).rank(method="average").to_numpy() - 1.0
    return ranks / (values.size - 1)


def _quantile(values: np.ndarray, q: float) -> str:
    if not values.size:
        return "—"
    return tick_label(float(np.quantile(values, q, method="nearest")))
