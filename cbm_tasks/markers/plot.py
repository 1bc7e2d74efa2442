"""The inspector's picture of one parcel: NDVI (and NDMI), S1 backscatter and coherence with the events.

:func:`parcel_figure` is pure (series and events in, a matplotlib ``Figure`` out; no pyplot
state, Agg canvas); :func:`plot_parcel` computes the markers of one parcel and writes the PNG.
Cloudy or rejected observations are drawn grey (cloud dips the mask missed as grey crosses), so an
inspector sees which observations the decision used.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cbm_tasks.markers.engine import MARKERS, MarkerResult, markers_from_prepared
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import PreparedSeries, prepare
from cbm_tasks.markers.series import SeriesTable

__all__ = ["parcel_figure", "plot_parcel"]

_EVENT_COLOURS = {"mowing": "#d62728", "bare_soil": "#8c564b", "harvest": "#ff7f0e", "emergence": "#2ca02c"}


def _dates(day: np.ndarray) -> np.ndarray:
    return (day * 86400.0).astype("int64").astype("datetime64[s]")


def parcel_figure(prepared: PreparedSeries, result: MarkerResult, parcel: int, *,
                  markers: Collection[str] | None = None) -> Figure:
    """Return the figure of parcel index *parcel* (index into ``prepared.parcel_ids``).

    Args:
        prepared: the prepared series (:func:`cbm_tasks.markers.preprocess.prepare`).
        result: its marker result (same parcels).
        parcel: parcel index.
        markers: draw only the events of these markers (those the parcel's schemes read: a mowing
            drawn on a maize parcel only confuses); None draws every marker's events.
    """
    s2, bs, coh = prepared.s2, prepared.backscatter, prepared.coherence
    figure = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    axes = figure.subplots(3, 1, sharex=True, height_ratios=[2.2, 1, 1])
    rows = slice(s2.offsets[parcel], s2.offsets[parcel + 1])
    day, ndvi, valid, dip = s2.day[rows], s2.ndvi[rows], s2.valid[rows], s2.cloud_dip[rows]
    ax = axes[0]
    ax.plot(_dates(day[valid]), ndvi[valid], "-o", color="#2ca02c", markersize=4, label="NDVI (clear)")
    cloudy = ~valid & ~dip
    ax.plot(_dates(day[cloudy]), np.clip(ndvi[cloudy], -0.1, 1.0), "o", color="0.75", markersize=3,
            label="cloudy / rejected")
    ax.plot(_dates(day[dip]), ndvi[dip], "x", color="0.45", markersize=6, label="cloud dip (mask missed)")
    # the moisture index the cut test reads where B11 exists (cut grass dries: NDMI falls with NDVI)
    ndmi = s2.ndmi[rows]
    if np.isfinite(ndmi[valid]).any():
        ax.plot(_dates(day[valid]), ndmi[valid], "--", color="#1f77b4", linewidth=1.0, label="NDMI (clear)")
    ax.set_ylim(-0.1, 1.0)
    ax.set_ylabel("NDVI")
    pick = result.parcel == parcel
    for name, colour in _EVENT_COLOURS.items():
        if markers is not None and name not in markers:
            continue
        chosen = pick & (result.marker == MARKERS.index(name))
        for k, i in enumerate(np.flatnonzero(chosen)):
            for axis in axes:
                axis.axvspan(_dates(result.start[i:i + 1])[0], _dates(result.end[i:i + 1])[0], color=colour,
                             alpha=0.12, linewidth=0)
                axis.axvline(_dates(result.main[i:i + 1])[0], color=colour, linewidth=1.4,
                             label=f"{name}" if (k == 0 and axis is axes[0]) else None)
            ax.annotate(f"{result.confidence[i]:.2f}", (_dates(result.main[i:i + 1])[0], 0.95), color=colour,
                        fontsize=8, ha="center")
    ax.legend(loc="lower center", fontsize=8, ncol=4)
    shown = "" if markers is None else f"; events of {', '.join(sorted(markers)) or 'no marker'}"
    ax.set_title(f"parcel {prepared.parcel_ids[parcel]}: {int(result.n_used[parcel])} clear S2 observations, "
                 f"{int(result.n_rejected[parcel])} rejected; parameters {result.params.hash[:12]}{shown}")
    rows = slice(bs.offsets[parcel], bs.offsets[parcel + 1])
    for orbit in np.unique(bs.orbit[rows]):
        same = bs.orbit[rows] == orbit
        label = f"orbit {orbit}" if orbit >= 0 else "all orbits"
        axes[1].plot(_dates(bs.day[rows][same]), bs.vv[rows][same], ".-", linewidth=0.8, label=f"VV {label}")
        axes[1].plot(_dates(bs.day[rows][same]), bs.vh[rows][same], ".-", linewidth=0.8, label=f"VH {label}")
    axes[1].set_ylabel("backscatter (dB)")
    rows = slice(coh.offsets[parcel], coh.offsets[parcel + 1])
    axes[2].plot(_dates(coh.day[rows]), coh.vv[rows], ".-", linewidth=0.8, label="VV")
    axes[2].plot(_dates(coh.day[rows]), coh.vh[rows], ".-", linewidth=0.8, label="VH")
    axes[2].set_ylim(0.0, 1.0)
    axes[2].set_ylabel("coherence")
    for axis, n_obs in ((axes[1], bs.offsets[parcel + 1] - bs.offsets[parcel]),
                        (axes[2], coh.offsets[parcel + 1] - coh.offsets[parcel])):
        if n_obs:
            axis.legend(loc="upper left", fontsize=7, ncol=4)
        else:
            axis.text(0.5, 0.5, "no data", transform=axis.transAxes, ha="center", color="0.5")
    return figure


def plot_parcel(series: SeriesTable, parcel_id: str, *, params: MarkerParams, out: Path,
                markers: Collection[str] | None = None) -> Path:
    """Compute the markers of *parcel_id* in *series* and write its figure to *out* (PNG).

    *markers*: draw only these markers' events (:func:`parcel_figure`); None draws all.

    Raises:
        NotFoundError: *parcel_id* is not in *series*.
    """
    one = series.one_parcel(parcel_id)
    prepared = prepare(one, params)
    figure = parcel_figure(prepared, markers_from_prepared(prepared, params), 0, markers=markers)
    partial = out.with_name(f".{out.name}.partial.png")
    try:
        FigureCanvasAgg(figure)
        figure.savefig(str(partial), format="png")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
