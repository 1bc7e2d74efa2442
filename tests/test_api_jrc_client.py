"""JRC's own client library (PyPI ``cbm``, what JRC's notebooks import) against the API served by ``cbm api serve``.

The library is installed apart from the project (tests/jrc_client/requirements.txt, scripts/install.sh)
and runs in its own process with that folder first on its path, as an analyst's notebook kernel would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from api_world import S2_DATES, World, write_ortho
from rasterio.errors import NotGeoreferencedWarning

from cbm_tasks.ops.api_process import serve_standalone

CLIENT = Path(__file__).parent / "notebooks" / "jrc_cbm_client.py"
LIBRARY = Path(sys.prefix) / "var" / "jrc_client"  # .venv/var/jrc_client, made by scripts/install.sh


@pytest.fixture(scope="module")
def api_url(api_world: World) -> Iterator[str]:
    ortho = write_ortho(api_world.store_root / "ortho.tif")
    with serve_standalone(api_world.db_url, store_root=api_world.store_root,
                          backgrounds={"ortho": str(ortho), "osm": str(ortho)}) as url:
        yield url


def test_jrc_cbm_library_runs_its_notebook_cells(api_url: str, api_world: World, tmp_path: Path) -> None:
    assert (LIBRARY / "cbm" / "__init__.py").exists(), f"JRC's cbm library is not installed in {LIBRARY}: make install"
    env = os.environ | {"PYTHONPATH": str(LIBRARY), "API_URL": api_url, "API_USER": "ann",
                        "API_PASS": api_world.secrets["ann"], "AOI": "alpha", "YEAR": "2018", "PID": "2",
                        "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(CLIENT)], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line for line in result.stdout.splitlines() if " " in line}
    assert lines["parcel"] == "parcel 2 grassland 32631"
    assert lines["s2"] == "s2 15 ['B02', 'B03', 'B04', 'B08', 'SC']" and lines["bs"] == "bs 4 ['VHb', 'VVb']"
    assert lines["peers"] == "peers [1, 3, 6]" and lines["weather"] == "weather 0"
    assert lines["figures"] == "figures ['chips_ndvi', 'chips_true_color', 'ndvi', 's1_bs', 's2_bands']"
    # the figures plot the data: JRC's client draws VV{b,c} of Sentinel-1 (with plain VV its figure stayed empty)
    assert lines["points"] == "points {'ndvi': 12, 's2_bands': 24, 's1_bs': 8}"
    dates = [f"{d:%Y%m%d}" for d in S2_DATES[:2]]
    assert lines["chips"] == "chips " + str(sorted(f"S2_alpha_{d}.{b}.tif" for d in dates
                                                   for b in ("B02", "B03", "B04", "B08")))
    assert lines["backgrounds"] == "backgrounds ['ortho.tif']"  # google: not configured, skipped
    # the parcel's card and the background grid show the orthophoto with the parcel's outline (an image + a patch)
    assert lines["cards"] == "cards {'parcel_card': 2, 'background_grid': 2}"
    for figure in tmp_path.glob("*.png"):  # every figure drew something
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a picture
            with rasterio.open(figure) as image:
                assert np.ptp(image.read(1)) > 0, figure.name
    [background] = tmp_path.glob("temp/**/backgrounds/ortho.tif")
    with rasterio.open(background) as image:
        assert image.crs.to_epsg() == 32631 and image.shape == (256, 256) and image.count == 3
