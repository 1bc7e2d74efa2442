"""The request patterns of JRC's own scripts for its API, followed step by step against ours.

JRC's calendar view (``scripts/calendar_view_gui``), its time-series notebook
(``notebooks/get_and_display_graphs_from_restful``) and its API tests (``tests/test_restful_chips.py``,
``tests/test_post*.py`` of ec-jrc/cbm) filter the answers on exact names and cut file names apart;
nothing fails loudly when a name differs (an empty frame, an empty figure). Each step here does what
those scripts do, in our words, and checks that it finds what it looks for.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import rasterio
from api_world import P2_LAT, P2_LON, P2_X, P2_Y, S2_DATES, World
from fastapi.testclient import TestClient
from shapely.geometry import shape

CLOUDY = [0, 1, 3, 8, 9, 10, 11]  # the calendar view's cloud_categories


def test_calendar_view_finds_its_cloud_free_tiles_and_their_chips(api_client: TestClient, api_world: World) -> None:
    ann = api_world.basic("ann")
    # its parcel: by location, with the geometry in the set's CRS (test_restful_chips.py reads it with OGR)
    url = f"/query/parcelByLocation?parcels=alpha2018&lon={P2_LON}&lat={P2_LAT}&withGeometry=True"
    parcel = api_client.get(url, auth=ann).json()
    pid, srid = parcel["pid"][0], parcel["srid"][0]
    assert shape(json.loads(parcel["geom"][0])).contains(shape({"type": "Point", "coordinates": (P2_X, P2_Y)}))

    # the time series with the SCL histogram and the product name; the B04 rows; cloud-free by the histogram
    text = api_client.get(f"/query/parcelTimeSeries?aoi=alpha&year=2018&pid={pid}&tstype=s2&scl=True&ref=True",
                          auth=ann).text
    df = pd.read_json(io.StringIO(text))
    red = df[df["band"] == "B04"].copy()
    red["cf"] = [not any(int(c) in CLOUDY for c in hist) for hist in red["hist"]]
    red = red[red["cf"]]
    red["date"] = [datetime.fromtimestamp(t, UTC).date() for t in red["date_part"]]
    tiles = [ref.split(".")[0] for ref in red.sort_values("reference")["reference"]]
    assert len(tiles) == len(S2_DATES) and [d.isoformat() for d in red["date"]] == [f"{d:%Y-%m-%d}" for d in S2_DATES]

    # the bands of those tiles (rawChipsBatch), named <tile>.<band>.tif at /dump/<id>/<name>
    body = {"lon": round(P2_LON, 5), "lat": round(P2_LAT, 5), "tiles": tiles, "bands": ["B08", "B04", "B03"],
            "chipsize": 320}
    answer = api_client.post("/query/rawChipsBatch", json=body, auth=ann).json()
    names = [chip.split("/")[3] for chip in answer["chips"]]
    assert sorted(names) == sorted(f"{t}.{b}.tif" for t in tiles for b in ("B08", "B04", "B03"))
    dates = {name.split("_")[2][:8] for name in names}  # the calendar view's acquisition date
    assert dates == {f"{d:%Y%m%d}" for d in S2_DATES}

    # test_post.py: NDVI from a B08 chip and the B04 chip its URL names when edited, fetched without login
    nir_url = next(c for c in answer["chips"] if c.endswith("B08.tif"))
    red_url = nir_url.replace("B08.tif", "B04.tif")
    with rasterio.open(io.BytesIO(api_client.get(nir_url).content)) as nir_tif, \
            rasterio.open(io.BytesIO(api_client.get(red_url).content)) as red_tif:
        nir, red_band = nir_tif.read(1).astype(float), red_tif.read(1).astype(float)
        assert nir.shape == red_band.shape == (32, 32) and red_tif.descriptions == ("B04",)
        assert int(str(red_tif.crs).split(":")[-1]) == srid  # test_restful_chips.py compares the two this way
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (nir - red_band) / (nir + red_band)
    assert np.isfinite(ndvi).any()


def test_time_series_notebook_merges_red_and_nir_per_image_and_plots_s1_by_orbit(api_client: TestClient,
                                                                                     api_world: World) -> None:
    ann = api_world.basic("ann")
    q = "/query/parcelTimeSeries?aoi=alpha&year=2018&pid=1&scl=True&ref=True&tstype="
    df = pd.read_json(io.StringIO(api_client.get(q + "s2", auth=ann).text))
    bands = ["B04", "B08"]
    per_band = [df[df["band"] == b][["date_part", "mean", "count", "std", "reference"]] for b in bands]
    merged = pd.merge(*per_band, on="reference", suffixes=tuple(bands))
    merged["ndvi"] = (merged["meanB08"] - merged["meanB04"]) / (merged["meanB08"] + merged["meanB04"])
    assert len(merged) == len(S2_DATES) and merged["ndvi"].between(-1, 1).all()

    # backscatter and coherence as JRC's tables name them; the orbit from the hour of the acquisition
    bs = pd.read_json(io.StringIO(api_client.get(q + "bs", auth=ann).text))
    assert "hist" not in bs.columns  # no SCL histogram for Sentinel-1, even when asked
    bs["orbit"] = ["D" if datetime.fromtimestamp(t, UTC).hour < 12 else "A" for t in bs["date_part"]]
    vv = bs[(bs["band"] == "VVb") & (bs["orbit"] == "A")]
    assert len(vv) == 2 and (vv["mean"] > 0).all()  # linear: the notebook takes 10 log10 itself

    # the S1 chips by date (rawS1ChipsBatch): labels <time>_<pol>, one chip each, VV edited to VH
    s1 = {"lon": round(P2_LON, 5), "lat": round(P2_LAT, 5), "dates": ["2018-04-01", "2018-05-31"], "chipsize": 640,
          "plevel": "CARD-BS"}
    answer = api_client.post("/query/rawS1ChipsBatch", json=s1, auth=ann).json()
    assert len(answer["dates"]) == len(answer["chips"]) == 4
    for label, chip in zip(answer["dates"], answer["chips"], strict=True):
        assert label.endswith(("_VV", "_VH")) and int(label[9:11]) >= 12  # ascending, as the hour says
        assert chip.endswith(f"{label[-3:]}.tif")
    vv_chip = next(c for c in answer["chips"] if c.endswith("_VV.tif"))
    assert api_client.get(vv_chip.replace("VV", "VH")).status_code == 200
