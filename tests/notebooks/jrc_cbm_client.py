# ruff: noqa: T201 - a notebook prints its results
"""The cells of JRC's RESTful_examples notebook, with JRC's own client library (PyPI ``cbm``): cbm.get and cbm.show.

Reads API_URL, API_USER, API_PASS, AOI, YEAR, PID from the environment; writes the library's files
(config/, temp/) and the figures into the working folder; prints one line per cell. Nothing in it
knows which server answers.
"""

import glob
import os

import matplotlib

matplotlib.use("Agg")  # no screen; the library's own plt.show(fig) needs view=False with today's matplotlib

import cbm  # noqa: E402 - after the backend is chosen

aoi, year, pid = os.environ["AOI"], os.environ["YEAR"], int(os.environ["PID"])
cbm.set_api_account(os.environ["API_URL"], os.environ["API_USER"], os.environ["API_PASS"])

parcel = cbm.get.parcel_info.by_pid(aoi, year, pid, "")
print("parcel", parcel["pid"][0], parcel["cropname"][0], parcel["srid"][0])

s2 = cbm.get.time_series.by_pid(aoi, year, pid, "s2", "")
print("s2", len(s2["band"]), sorted(set(s2["band"])))
bs = cbm.get.time_series.by_pid(aoi, year, pid, "bs", "")
print("bs", len(bs["band"]), sorted(set(bs["band"])))

weather = cbm.get.time_series.weather(aoi, year, pid, "")  # no weather data on this server: an empty answer
print("weather", len(weather))

peers = cbm.get.parcels_list.peers(aoi, year, pid, distance=500, maxPeers=5, ptype="")
print("peers", peers["pids"])

figures = {
    "ndvi": cbm.show.time_series.ndvi(aoi, year, [pid, *peers["pids"][:2]], ptype="", max_line_plots=1, view=False),
    "s2_bands": cbm.show.time_series.s2(aoi, year, pid, ptype="", bands=["B02", "B03", "B04", "B08"],
                                        scl="3_8_9_10_11", view=False),
    "s1_bs": cbm.show.time_series.s1(aoi, year, pid, "bs", "", view=False),
    # raw chips of three bands (rawChipByLocation, fetched without login), merged per date, parcel drawn on them
    "chips_true_color": cbm.show.chip_images.grid(aoi, year, pid, f"{year}-04-01", f"{year}-05-31", "true color",
                                                  640, ptype="", view=False),
    "chips_ndvi": cbm.show.chip_images.grid(aoi, year, pid, f"{year}-04-01", f"{year}-05-31", "ndvi", 640,
                                            ptype="", view=False),
}
for name, figure in figures.items():
    figure.savefig(f"{name}.png")
print("figures", sorted(figures))
# what the time-series figures plot: points of the data lines (a band the library filters for but does not find
# draws an empty figure without an error)
print("points", {name: sum(len(line.get_xdata()) for axes in figures[name].axes for line in axes.lines)
                 for name in ("ndvi", "s2_bands", "s1_bs")})
print("chips", sorted(os.path.basename(f) for f in glob.glob("temp/**/chip_images/*.tif", recursive=True)))

# orthophoto backgrounds: "ortho" is configured on the server, "google" is not (JRC's {}: skipped)
cbm.get.background.by_pid(aoi, year, pid, 256, 300, tms=["ortho", "google"], ptype="")
print("backgrounds", sorted(os.path.basename(f) for f in glob.glob("temp/**/backgrounds/*.tif", recursive=True)))
# the parcel's card (its attributes beside its default background, "osm", with the outline) and the background grid
cards = {"parcel_card": cbm.show.parcel_info.by_pid(aoi, year, pid, ptype="", view=False),
         "background_grid": cbm.show.background.by_pid(aoi, year, pid, 256, 300, tms=["ortho"], ptype="", view=False)}
for name, figure in cards.items():
    figure.savefig(f"{name}.png")
print("cards", {name: sum(len(axes.images) + len(axes.patches) for axes in figure.axes)
               for name, figure in cards.items()})
