"""A parcel register delivered as a zip archive: which file inside it to read.

Agencies publish registers zipped, often in a folder (``LV_2021/LV_2021_EC21.shp``), sometimes as a
File Geodatabase in a folder or as a GeoParquet file. GDAL opens ``/vsizip/x.zip`` only as a
folder of files at the archive's root, so an archive is looked into first:

* the vector datasets in it are the shapefiles (by their ``.shp``), GeoPackages, GeoJSON,
  FlatGeobuf, GML, SQLite and Parquet files, and File Geodatabase folders (``*.gdb/``); macOS
  resource forks (``__MACOSX/``, ``._*``) are not;
* one dataset is opened where it lies (``/vsizip/x.zip/folder/file.shp``); several shapefiles of
  one folder are that folder, whose layers ``--layer`` chooses, as at the root before;
* a Parquet file is copied out to a temporary folder for pyarrow (the bundled GDAL reads no
  Parquet) and removed after the read;
* an archive without any is left to GDAL, whose message names it; several datasets in different
  folders are an error that lists them.

Messages name the archive and the file in it (``x.zip/folder/file.shp``), never a temporary path.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from cbm_tasks.errors import ParcelImportError

__all__ = ["is_parquet", "register_in"]

_FILE_SUFFIXES = (".shp", ".gpkg", ".geojson", ".json", ".fgb", ".gml", ".sqlite", ".parquet", ".geoparquet")
_SECONDARY_SUFFIXES = (".json", ".gml")


def is_parquet(path: Path | str) -> bool:
    """Whether *path* (a file, or a member of an archive) is a (Geo)Parquet file, which pyarrow reads, not GDAL."""
    return PurePosixPath(path).suffix.lower() in (".parquet", ".geoparquet")


@contextmanager
def register_in(path: Path) -> Iterator[tuple[Path | str, str]]:
    """Yield (what to open, its name for messages) for the register file *path*.

    Anything but a zip archive is itself. Raises ParcelImportError for an archive holding
    several vector datasets in different folders (which one is the register is the user's choice).
    """
    if path.suffix.lower() != ".zip" or not path.is_file():
        yield path, str(path)
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ParcelImportError(f"{path}: not a readable zip archive: {err}") from err
    with archive:
        datasets = _datasets(archive.namelist())
        if len(datasets) == 1 and is_parquet(datasets[0]):  # pyarrow reads files: copied out, removed after
            with tempfile.TemporaryDirectory(prefix="cbm-register-") as scratch:
                target = Path(scratch) / PurePosixPath(datasets[0]).name
                with archive.open(datasets[0]) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                yield target, f"{path}/{datasets[0]}"
            return
    if not datasets:
        yield path, str(path)  # GDAL says what the archive is not
    elif len(datasets) == 1:
        yield f"/vsizip/{path}/{datasets[0]}", f"{path}/{datasets[0]}"
    elif len({PurePosixPath(d).parent for d in datasets}) == 1 and all(d.lower().endswith(".shp") for d in datasets):
        folder = str(PurePosixPath(datasets[0]).parent)  # shapefiles of one folder: its layers
        yield (path, str(path)) if folder == "." else (f"/vsizip/{path}/{folder}", f"{path}/{folder}")
    else:
        raise ParcelImportError(f"{path}: several vector datasets in the archive ({', '.join(datasets)}); "
                                "unpack it and import the register's file")


def _datasets(names: list[str]) -> list[str]:
    """The vector datasets among the members *names* of an archive, in archive order.

    JSON and GML files count only where nothing else does: beside a shapefile or a GeoPackage they
    are metadata (an INSPIRE record, a style), not a second register.
    """
    found: dict[str, None] = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
            continue
        gdb = next((k for k, part in enumerate(parts) if part.lower().endswith(".gdb")), None)
        if gdb is not None:  # a File Geodatabase is a folder of tables
            found["/".join(parts[:gdb + 1])] = None
        elif not name.endswith("/") and PurePosixPath(name).suffix.lower() in _FILE_SUFFIXES:
            found[name] = None
    primary = [d for d in found if PurePosixPath(d).suffix.lower() not in _SECONDARY_SUFFIXES]
    return primary or list(found)
