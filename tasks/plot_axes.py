"""The axes of the report's plots: log axes labelled as counts (10k, 1M) or as powers of ten (2×10¹²),
colour scales and colour bars for N or D, and the note an empty plot shows."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter


def si(value: float, _position=None) -> str:
    """10000 -> "10k", 2.5e6 -> "2.5M": tick labels for counts of parameters and tokens."""
    if value <= 0:
        return ""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def sci(value: float, _position=None) -> str:
    """1e12 -> "10¹²" and 2e12 -> "2×10¹²": tick labels for compute, in Unicode superscripts rather
    than mathtext, whose parser took a third of the report's first plot with such labels."""
    if value <= 0:
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10**exponent
    head = "" if abs(mantissa - 1) < 1e-6 else f"{mantissa:.2g}×"
    return f"{head}10{str(exponent).translate(_SUPERSCRIPT)}"


def log_axis(ax, axis: str, counts: bool) -> None:
    """A log axis; counts (N, D) labelled as 10k, 1M, compute as powers of ten."""
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    low, high = ax.get_xlim() if axis == "x" else ax.get_ylim()
    log_ticks(ax.xaxis if axis == "x" else ax.yaxis, low, high, counts)


def log_ticks(target, low: float, high: float, counts: bool) -> None:
    """Labels at decades, or also at 2 and 5 when the axis spans under two decades, or (for the short
    labels of counts) at every digit under one decade; none on the minor ticks, where they would overlap."""
    ratio = high / max(low, 1e-300)
    subs = (1.0, 2.0, 5.0) if ratio < 100 else (1.0,)
    subs = np.arange(1.0, 10.0) if ratio < 10 and counts else subs
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10), numticks=100))
    target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(FuncFormatter(si if counts else sci))


def log_norm(values: np.ndarray) -> LogNorm:
    low, high = float(np.min(values)), float(np.max(values))
    return LogNorm(low, high) if high > low * 1.01 else LogNorm(low / 1.5, high * 1.5)


def count_colourbar(figure, ax, mappable, label: str) -> None:
    """A colour bar for N or D (a LogNorm), with the same readable ticks as the axes."""
    bar = figure.colorbar(mappable, ax=ax, label=label)
    log_ticks(bar.ax.yaxis, mappable.norm.vmin, mappable.norm.vmax, counts=True)


def no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
