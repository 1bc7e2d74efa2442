# ruff: noqa: T201 - a notebook prints its results
"""A notebook as analysts write them for JRC's CbM RESTful API: requests, HTTP Basic, pandas.

Reads API_URL, API_USER, API_PASS, AOI, YEAR, LON, LAT from the environment; prints what it
found. Nothing in it knows which server answers.
"""

import glob
import io
import json
import os
import tempfile

import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import rasterio.warp
import requests

api_url = os.environ["API_URL"]
api_user = os.environ["API_USER"]
api_pass = os.environ["API_PASS"]
aoi = os.environ["AOI"]
year = int(os.environ["YEAR"])
lon, lat = float(os.environ["LON"]), float(os.environ["LAT"])

# What the server holds: JRC's first cell
response = requests.get(f"{api_url}/query/info", auth=(api_user, api_pass))
info = json.loads(response.content)
print("info", sorted(info["aois"]), info["aois"][aoi]["time_series"])

# Parcel information by location
url = f"{api_url}/query/parcelByLocation?parcels={aoi}{year}&lon={lon}&lat={lat}&withGeometry=True"
response = requests.get(url, auth=(api_user, api_pass))
parcel = json.loads(response.content)
pid = parcel["ogc_fid"][0]
print("parcel", pid, parcel["cropname"][0], parcel["cropcode"][0], round(parcel["area"][0]), parcel["srid"][0])
geom = json.loads(parcel["geom"][0])
print("geometry", geom["type"], len(geom["coordinates"][0][0]))

# The same parcel by id, as a table
response = requests.get(f"{api_url}/query/parcelByID?aoi={aoi}&year={year}&pid={pid}", auth=(api_user, api_pass))
df = pd.read_json(io.StringIO(response.text))
print("byid", list(df.columns), df["clon"][0], df["clat"][0])

# Parcels in a polygon around it (JRC's lon_lat-lon_lat notation)
d = 0.002
poly = f"{lon - d}_{lat - d}-{lon + d}_{lat - d}-{lon + d}_{lat + d}-{lon - d}_{lat + d}-{lon - d}_{lat - d}"
response = requests.get(f"{api_url}/query/parcelsByPolygon?aoi={aoi}&year={year}&polygon={poly}",
                        auth=(api_user, api_pass))
ids = pd.read_json(io.StringIO(response.text))
print("polygon", sorted(ids["ogc_fid"].tolist()))

# Peers
response = requests.get(f"{api_url}/query/parcelPeers?aoi={aoi}&year={year}&pid={pid}&distance=500&max=5",
                        auth=(api_user, api_pass))
peers = pd.read_json(io.StringIO(response.text))
print("peers", peers["pid"].tolist(), [round(x) for x in peers["distance"]])
# the names of JRC's API since 2022 (cbm package): pid for the parcel, pids for its peers
print("newer", parcel["pid"][0] == pid, peers["pids"].tolist() == peers["pid"].tolist())

# Sentinel-2 time series, NDVI from B4 and B8 (by either of the names JRC's servers give them, as JRC's docs do)
response = requests.get(f"{api_url}/query/parcelTimeSeries?aoi={aoi}&year={year}&pid={pid}&tstype=s2",
                        auth=(api_user, api_pass))
df = pd.read_json(io.StringIO(response.text))
df["date"] = pd.to_datetime(df["date_part"], unit="s")
df = df[df["count"] > 0]
b4 = df[df["band"].isin(["B4", "B04"])].set_index("date")["mean"]
b8 = df[df["band"].isin(["B8", "B08"])].set_index("date")["mean"]
ndvi = (b8 - b4) / (b8 + b4)
print("s2", len(df), sorted(df["band"].unique()), "ndvi", [round(v, 4) for v in ndvi])

# Cloud cover per image as JRC's S2 notebook computes it: the SCL histogram of each image (scl=True, the
# default) and the product name (ref=True), the two bands joined on it
url = f"{api_url}/query/parcelTimeSeries?aoi={aoi}&year={year}&pid={pid}&tstype=s2&scl=True&ref=True"
df = pd.read_json(io.StringIO(requests.get(url, auth=(api_user, api_pass)).text))
cloudy = {3, 8, 9, 10, 11}
df["cloud_pct"] = df["hist"].apply(lambda h: round(100 * sum(n for c, n in h.items() if int(c) in cloudy)
                                                   / max(sum(h.values()), 1)))
both = pd.merge(df[df["band"] == "B04"], df[df["band"] == "B08"], on="reference", suffixes=("B4", "B8"))
print("clouds", len(both), sorted(set(both["cloud_pctB4"])), both["reference"].iloc[0], dict(df["hist"].iloc[0]))

# One band only, and the CSV form
response = requests.get(f"{api_url}/query/parcelTimeSeries?aoi={aoi}&year={year}&pid={pid}&tstype=s2&band=B8",
                        auth=(api_user, api_pass))
print("b8", len(pd.read_json(io.StringIO(response.text))))
response = requests.get(f"{api_url}/query/parcelTimeSeries?aoi={aoi}&year={year}&pid={pid}&tstype=s2&tsformat=csv",
                        auth=(api_user, api_pass))
print("csv", len(pd.read_csv(io.StringIO(response.text))))

# Sentinel-1 backscatter and the scene classification
for tstype in ("bs", "scl"):
    response = requests.get(f"{api_url}/query/parcelTimeSeries?aoi={aoi}&year={year}&pid={pid}&tstype={tstype}",
                            auth=(api_user, api_pass))
    df = pd.read_json(io.StringIO(response.text))
    df["date"] = pd.to_datetime(df["date_part"], unit="s")
    print(tstype, len(df), sorted(df["band"].unique()), round(float(df["mean"].iloc[0]), 4))

# The parcel's markers as JRC's marker table
response = requests.get(f"{api_url}/query/markers?aoi={aoi}&year={year}&pid=1", auth=(api_user, api_pass))
markers = pd.read_json(io.StringIO(response.text))
print("markers", markers["marker"].tolist(), markers["date_start"].tolist(), markers["duration_days"].tolist())

# Raw chips of the scene classification around the parcel, as JRC's chip notebook: list them, fetch each GeoTIFF
# without credentials (api_url + the relative link), then histogram the classes under the parcel in every chip
url = (f"{api_url}/query/rawChipByLocation?lon={lon}&lat={lat}&start_date={year}-04-01&end_date={year}-05-31"
       "&band=SCL&chipsize=1280")
chips = pd.read_json(io.StringIO(requests.get(url, auth=(api_user, api_pass)).text))
with tempfile.TemporaryDirectory() as folder:
    for c in chips.chips:
        res = requests.get(f"{api_url}{c}", stream=True)
        with open(os.path.join(folder, c.split("/")[-1]), "wb") as handle:
            for chunk in res.iter_content(chunk_size=512):
                handle.write(chunk)
    histograms = []
    for tif in sorted(glob.glob(os.path.join(folder, "*.SCL.tif"))):
        with rasterio.open(tif) as src:
            data, affine, crs = src.read(1), src.transform, src.crs.to_epsg()
        shape = geom if crs == parcel["srid"][0] else rasterio.warp.transform_geom(
            f"EPSG:{parcel['srid'][0]}", f"EPSG:{crs}", geom)
        inside = rasterio.features.geometry_mask([shape], out_shape=data.shape, transform=affine, invert=True)
        classes, counts = np.unique(data[inside & (data != 0)], return_counts=True)
        histograms.append({int(k): int(n) for k, n in zip(classes, counts, strict=True)})
print("rawchips", chips["dates"].tolist(), histograms)
