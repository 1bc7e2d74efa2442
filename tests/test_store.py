"""The object store against a real S3-protocol server (moto, server mode) and a local folder."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import rasterio
from affine import Affine
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError
from rasterio.windows import Window
from s3_faults import FaultProxy, fault_proxy
from s3_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, moto_server

from cbm_tasks.errors import BadInputError, ConfigError, NotFoundError, StoreError, TransientError
from cbm_tasks.store import LocalStore, ObjectInfo, StoreConfig, open_store
from cbm_tasks.store.s3 import S3Store, _translate

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes, every offset recognisable


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def bucket(s3: MotoServer) -> str:
    name = f"cbm-test-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "scratch"


@pytest.fixture
def store(s3: MotoServer, bucket: str, scratch: Path) -> S3Store:
    cfg = StoreConfig(kind="s3", bucket=bucket, root="cbm", endpoint_url=s3.endpoint_url,
                      access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, scratch_dir=str(scratch))
    opened = open_store(cfg)
    assert isinstance(opened, S3Store)
    return opened


def _file(path: Path, payload: bytes = PAYLOAD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def _write_cog(path: Path) -> np.ndarray:
    """A 512 x 512 uint16 tiled GeoTIFF (256 px blocks, EPSG:32631) with known values."""
    values = (np.arange(512 * 512, dtype=np.uint32) % 65000).astype(np.uint16).reshape(512, 512)
    profile = {"driver": "GTiff", "width": 512, "height": 512, "count": 1, "dtype": "uint16", "nodata": 0,
               "crs": "EPSG:32631", "transform": Affine(10, 0, 501360, 0, -10, 5629680),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return values


# --- configuration ----------------------------------------------------------------------------


def test_config_repr_hides_secrets() -> None:
    cfg = StoreConfig(kind="s3", bucket="eodata", endpoint_url="https://eodata.dataspace.copernicus.eu",
                      access_key="AKIA-VISIBLE?", secret_key="s3cr3t-value", region="default")
    text = repr(cfg) + repr(open_store(cfg))
    assert "s3cr3t-value" not in text and "AKIA-VISIBLE?" not in text
    assert "eodata.dataspace.copernicus.eu" in text


def test_config_unknown_key_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="endpoint"):
        StoreConfig(**{"kind": "s3", "endpoint": "https://x"})  # misspelt connection extra


def test_config_empty_strings_mean_not_given() -> None:
    cfg = StoreConfig(kind="local", root="/data", bucket="", endpoint_url="", access_key="", secret_key="",
                      region="", scratch_dir="")
    assert (cfg.bucket, cfg.endpoint_url, cfg.access_key, cfg.region, cfg.scratch_dir) == (None,) * 5
    assert cfg.scratch_root().name == "cbm-scratch"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kind": "gcs"}, "'gcs'"), ({"kind": "s3", "endpoint_url": "eodata.dataspace.copernicus.eu"}, "https://host"),
     ({"kind": "s3", "access_key": "a"}, "together")],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        StoreConfig(**kwargs)


def test_cdse_gdal_options() -> None:
    cfg = StoreConfig(kind="s3", endpoint_url="https://eodata.dataspace.copernicus.eu", region="default",
                      access_key="k", secret_key="s")
    store = open_store(cfg)
    env = store.rasterio_env()
    assert env["AWS_S3_ENDPOINT"] == "eodata.dataspace.copernicus.eu"
    assert (env["AWS_HTTPS"], env["AWS_VIRTUAL_HOSTING"], env["AWS_REGION"]) == ("YES", "FALSE", "default")
    creds = env["session"].get_credential_options()  # rasterio sets the keys from the session
    assert (creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]) == ("k", "s")
    assert creds["AWS_S3_ENDPOINT"] == "eodata.dataspace.copernicus.eu"
    assert "AWS_SECRET_ACCESS_KEY" not in env  # rasterio.Env refuses it as a plain option
    assert env["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert ".jp2" in env["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"]
    key = "Sentinel-2/MSI/L2A/2024/B04.jp2"
    assert store.gdal_path(f"s3://eodata/{key}") == f"/vsis3/eodata/{key}"


# --- S3 store against moto ----------------------------------------------------------------------


def test_upload_exists_and_paged_listing(store: S3Store, bucket: str, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    for i in range(5):
        store.upload(_file(tmp_path / f"f{i}.bin", PAYLOAD[: 100 + i]), f"tile/f{i}.bin")  # relative to root
    store.upload(_file(tmp_path / "other.bin"), f"s3://{bucket}/cbm/tiles-other.bin")
    assert store.exists(f"s3://{bucket}/cbm/tile/f3.bin")
    assert store.exists("tile/f0.bin") and store.exists("tile/")
    assert not store.exists("tile/f9.bin") and not store.exists("nothing/")

    with caplog.at_level(logging.INFO, logger="cbm_tasks.store.s3"):
        listed = store.iter_objects(f"s3://{bucket}/cbm/tile/", page_size=2)
        first = next(listed)  # a generator: pages are fetched as they are consumed
        objects = [first, *listed]
    assert [o.uri for o in objects] == [f"s3://{bucket}/cbm/tile/f{i}.bin" for i in range(5)]
    assert [o.size_bytes for o in objects] == [100, 101, 102, 103, 104]
    assert all(isinstance(o, ObjectInfo) and o.last_modified.tzinfo and o.etag for o in objects)
    assert any("objects=5 pages=3" in r.getMessage() for r in caplog.records)
    assert len(list(store.iter_objects("tile"))) == 6  # a plain prefix also matches tiles-other.bin


def test_one_log_line_per_transfer_without_credentials(store: S3Store, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="cbm_tasks"):
        store.upload(_file(tmp_path / "a.bin"), "log/a.bin")
        store.read_bytes("log/a.bin", start=0, end=100)
        store.download("log/a.bin", tmp_path / "b.bin")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("cbm_tasks")]
    assert [m.split(" ")[0] for m in ours] == ["uploaded", "read", "downloaded"]
    assert all("uri=s3://" in m and "seconds=" in m for m in ours)
    assert "bytes=10240" in ours[0] and "bytes=100" in ours[1] and "range=bytes=0-99" in ours[1]
    assert not any(ACCESS_KEY in m or SECRET_KEY in m for m in ours)


def test_read_bytes_ranges(store: S3Store, s3: MotoServer, tmp_path: Path) -> None:
    store.upload(_file(tmp_path / "blob.bin"), "blob.bin")
    assert store.read_bytes("blob.bin") == PAYLOAD
    assert store.read_bytes("blob.bin", start=10, end=20) == PAYLOAD[10:20]
    assert store.read_bytes("blob.bin", start=10_000) == PAYLOAD[10_000:]
    assert store.read_bytes("blob.bin", end=300) == PAYLOAD[:300]
    assert store.read_bytes("blob.bin", start=5, end=5) == b""
    assert store.read_bytes("blob.bin", start=20_000) == b""  # past the end, as a file read
    assert any(re.search(r'"GET /[^ ]*/cbm/blob\.bin HTTP/1\.1" 206', line) for line in s3.requests())
    with pytest.raises(StoreError, match="end must be >= start"):
        store.read_bytes("blob.bin", start=20, end=10)


def test_download_to_file_and_folder(store: S3Store, tmp_path: Path) -> None:
    store.upload(_file(tmp_path / "a.bin"), "x/a.bin")
    target = store.download("x/a.bin", tmp_path / "out" / "copy.bin")
    assert target == tmp_path / "out" / "copy.bin" and target.read_bytes() == PAYLOAD
    (tmp_path / "dir").mkdir()
    assert store.download("x/a.bin", tmp_path / "dir").read_bytes() == PAYLOAD
    assert (tmp_path / "dir" / "a.bin").is_file()


def test_missing_key_names_bucket_and_key(store: S3Store, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=rf"'cbm/missing\.tif' in bucket '{bucket}'"):
        store.read_bytes("missing.tif")
    with pytest.raises(NotFoundError, match=r"missing\.tif"):
        store.download("missing.tif", tmp_path / "m.tif")
    with pytest.raises(NotFoundError, match=r"missing\.tif"):
        with store.local_copy("missing.tif"):
            pass
    with pytest.raises(NotFoundError, match="no bucket 'no-such-bucket-cbm'"):
        store.read_bytes("s3://no-such-bucket-cbm/k")
    with pytest.raises(NotFoundError, match="no object under prefix"):
        with store.local_copy("empty/"):
            pass


@pytest.mark.parametrize(
    ("uri", "match"),
    [("http://example.org/a.tif", "unsupported URI 'http://example.org/a.tif'"),
     ("s3:///key.tif", "not an s3://bucket/key URI: 's3:///key.tif'"), ("", "empty URI"),
     ("../escape.tif", "must stay under the store root"), ("file://host/a.tif", "file:///absolute/path")],
)
def test_bad_uri_quotes_accepted_forms(store: S3Store, uri: str, match: str) -> None:
    with pytest.raises(StoreError, match=match) as caught:
        store.read_bytes(uri)
    assert "accepted" in str(caught.value) or "root" in str(caught.value)


def test_relative_key_without_bucket(s3: MotoServer) -> None:
    store = open_store(StoreConfig(kind="s3", endpoint_url=s3.endpoint_url, access_key="a", secret_key="b"))
    with pytest.raises(StoreError, match="relative key 'a.tif' needs StoreConfig.bucket"):
        store.exists("a.tif")


def test_upload_replace_false_refuses(store: S3Store, tmp_path: Path) -> None:
    store.upload(_file(tmp_path / "v1.bin", b"one"), "obj.bin")
    with pytest.raises(StoreError, match="refusing to overwrite .*obj.bin"):
        store.upload(_file(tmp_path / "v2.bin", b"two"), "obj.bin", replace=False)
    assert store.read_bytes("obj.bin") == b"one"
    store.upload(tmp_path / "v2.bin", "obj.bin")
    assert store.read_bytes("obj.bin") == b"two"
    with pytest.raises(NotFoundError, match="no-file.bin"):
        store.upload(tmp_path / "no-file.bin", "x.bin")


def test_local_copy_of_a_key_is_removed_afterwards(store: S3Store, scratch: Path, tmp_path: Path) -> None:
    store.upload(_file(tmp_path / "B04.tif"), "p/B04.tif")
    with store.local_copy("p/B04.tif") as path:
        assert path.name == "B04.tif" and path.read_bytes() == PAYLOAD
        assert scratch in path.parents
    assert not path.exists() and list(scratch.iterdir()) == []


def test_local_copy_of_a_safe_prefix(store: S3Store, scratch: Path, tmp_path: Path) -> None:
    safe = "S2A_MSIL2A_20221005T114351_N0400_R123_T29UNU_20221005T153006.SAFE"
    files = {"MTD_MSIL2A.xml": b"<xml/>", "GRANULE/L2A_T29UNU/IMG_DATA/R60m/B04_60m.jp2": PAYLOAD}
    for name, payload in files.items():
        store.upload(_file(tmp_path / "src" / name, payload), f"{safe}/{name}")
    with store.local_copy(f"{safe}/") as folder:
        assert folder.name == safe
        copied = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert copied == files
    assert not folder.exists() and list(scratch.iterdir()) == []


def test_local_copy_is_removed_when_the_body_raises(store: S3Store, scratch: Path, tmp_path: Path) -> None:
    store.upload(_file(tmp_path / "a.bin"), "a.bin")
    with pytest.raises(ZeroDivisionError):
        with store.local_copy("a.bin") as path:
            assert path.is_file()
            _ = 1 / 0
    assert not path.exists() and list(scratch.iterdir()) == []


def test_rasterio_reads_a_cog_through_vsis3(store: S3Store, s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    values = _write_cog(tmp_path / "B08.tif")
    store.upload(tmp_path / "B08.tif", "S2/B08.tif")
    assert store.gdal_path("S2/B08.tif") == f"/vsis3/{bucket}/cbm/S2/B08.tif"
    env = store.rasterio_env()
    assert env["AWS_S3_ENDPOINT"] == s3.endpoint_url.removeprefix("http://")
    assert (env["AWS_HTTPS"], env["AWS_VIRTUAL_HOSTING"]) == ("NO", "FALSE")
    assert env["AWS_REGION"] == REGION
    assert env["session"].get_credential_options()["AWS_ACCESS_KEY_ID"] == ACCESS_KEY
    def ranged() -> int:
        return sum(1 for line in s3.requests() if "/cbm/S2/B08.tif HTTP/1.1\" 206" in line)

    with rasterio.Env(**env), rasterio.open(store.gdal_path("S2/B08.tif")) as src:
        assert (src.width, src.height, src.crs.to_epsg(), src.nodata) == (512, 512, 32631, 0)
        assert src.transform.c == 501360 and src.transform.f == 5629680
        after_open = ranged()
        window = src.read(1, window=Window(300, 260, 20, 10))  # inside one 256 px tile
        after_read = ranged()
    np.testing.assert_array_equal(window, values[260:270, 300:320])
    assert after_open >= 1  # the header, with a ranged GET
    assert after_read - after_open == 1  # exactly the one tile the window lies in, not the file
    full_gets = [line for line in s3.requests() if "/cbm/S2/B08.tif HTTP/1.1\" 200" in line and "GET" in line]
    assert full_gets == []
    store.upload(tmp_path / "B08.tif", "S2/B08.TIF")  # allowed extensions match whatever the case
    with rasterio.Env(**env), rasterio.open(store.gdal_path("S2/B08.TIF")) as src:
        assert src.read(1, window=Window(0, 0, 2, 1)).tolist() == [values[0, :2].tolist()]


def test_local_uris_through_the_s3_store(store: S3Store, tmp_path: Path) -> None:
    local = _file(tmp_path / "on-disk.bin")
    assert store.exists(str(local)) and store.read_bytes(local.as_uri(), start=1, end=3) == PAYLOAD[1:3]
    assert store.gdal_path(str(local)) == str(local)
    with store.local_copy(str(local)) as path:
        assert path == local


def test_connection_refused_is_transient(scratch: Path) -> None:
    cfg = StoreConfig(kind="s3", bucket="b", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b")
    client = boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b", region_name=REGION).client(
        "s3", endpoint_url=cfg.endpoint_url, config=Config(retries={"total_max_attempts": 1}, connect_timeout=2)
    )
    with pytest.raises(TransientError, match="s3://b/k.tif"):
        S3Store(cfg, client=client).read_bytes("k.tif")


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(503, "SlowDown", TransientError), (500, "InternalError", TransientError),
     (429, "TooManyRequests", TransientError), (403, "AccessDenied", StoreError),
     (404, "NoSuchKey", NotFoundError), (400, "InvalidArgument", StoreError)],
)
def test_error_translation(status: int, code: str, expected: type[Exception]) -> None:
    err = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                      "GetObject")
    translated = _translate(err, action="read", bucket="eodata", key="Sentinel-2/x.jp2")
    assert type(translated) is expected
    assert "eodata" in str(translated) and "Sentinel-2/x.jp2" in str(translated)


@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (403, "InvalidAccessKeyId"),
                                             (403, "SignatureDoesNotMatch")])
def test_access_denied_is_bad_input_not_transient(status: int, code: str) -> None:
    # a DAG retries what is not BadInputError while holding the image's claim; wrong credentials never pass
    err = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                      "GetObject")
    translated = _translate(err, action="read", bucket="eodata", key="Sentinel-2/x.jp2")
    assert isinstance(translated, BadInputError) and not isinstance(translated, TransientError)
    assert "access denied" in str(translated) and "cbm_store" in str(translated)
    assert isinstance(_translate(NoCredentialsError(), action="read", bucket="eodata", key="k"), BadInputError)


# --- local store --------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    opened = open_store(StoreConfig(root=str(tmp_path / "root"), scratch_dir=str(tmp_path / "scratch")))
    assert isinstance(opened, LocalStore)
    return opened


def test_local_upload_read_list(local: LocalStore, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for i in range(3):
        local.upload(_file(tmp_path / f"f{i}.bin", PAYLOAD[: 10 + i]), f"tile/f{i}.bin")
    assert (root / "tile" / "f2.bin").read_bytes() == PAYLOAD[:12]
    assert local.exists("tile/f0.bin") and local.exists((root / "tile").as_uri()) and not local.exists("x")
    assert [(o.uri, o.size_bytes) for o in local.iter_objects("tile")] == [
        (str(root / "tile" / f"f{i}.bin"), 10 + i) for i in range(3)
    ]
    assert [o.uri for o in local.iter_objects(str(root / "tile" / "f1"))] == [str(root / "tile" / "f1.bin")]
    assert local.read_bytes("tile/f2.bin", start=3, end=7) == PAYLOAD[3:7]
    assert local.read_bytes(str(root / "tile" / "f2.bin"), start=11) == PAYLOAD[11:12]
    assert local.read_bytes("tile/f2.bin", start=100) == b""


def test_local_download_copy_and_errors(local: LocalStore, tmp_path: Path) -> None:
    local.upload(_file(tmp_path / "a.bin"), "a.bin")
    assert local.download("a.bin", tmp_path / "d" / "b.bin").read_bytes() == PAYLOAD
    with local.local_copy("a.bin") as path:
        assert path == tmp_path / "root" / "a.bin"  # no copy for local files
    assert path.exists()
    with pytest.raises(StoreError, match="refusing to overwrite a.bin"):
        local.upload(tmp_path / "a.bin", "a.bin", replace=False)
    with pytest.raises(NotFoundError, match="missing.bin"):
        local.read_bytes("missing.bin")
    with pytest.raises(NotFoundError, match="missing.bin"):
        local.download("missing.bin", tmp_path)
    with pytest.raises(StoreError, match=r"set kind='s3'.*accepted: an absolute path"):
        local.read_bytes("s3://bucket/a.bin")
    with pytest.raises(StoreError, match="must stay inside the store root"):
        local.read_bytes("../a.bin")
    with pytest.raises(StoreError, match="needs StoreConfig.root"):
        open_store(StoreConfig()).read_bytes("a.bin")


def test_local_rasterio(local: LocalStore, tmp_path: Path) -> None:
    values = _write_cog(tmp_path / "B04.tif")
    local.upload(tmp_path / "B04.tif", "S2/B04.tif")
    assert local.rasterio_env() == {}
    assert local.gdal_path("S2/B04.tif") == str(tmp_path / "root" / "S2" / "B04.tif")
    with rasterio.Env(**local.rasterio_env()), rasterio.open(local.gdal_path("S2/B04.tif")) as src:
        np.testing.assert_array_equal(src.read(1, window=Window(0, 500, 3, 2)), values[500:502, 0:3])


# --- throttling and 5xx through the real server -------------------------------------------------


@pytest.fixture
def proxied(s3: MotoServer, bucket: str, scratch: Path) -> Iterator[tuple[S3Store, FaultProxy]]:
    """A store whose requests go through the fault-injecting proxy to the real moto server."""
    with fault_proxy(s3.endpoint_url) as proxy:
        cfg = StoreConfig(kind="s3", bucket=bucket, root="cbm", endpoint_url=proxy.endpoint_url,
                          access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, scratch_dir=str(scratch))
        opened = open_store(cfg)
        assert isinstance(opened, S3Store)
        yield opened, proxy


def _gets(proxy: FaultProxy, key: str) -> list[int]:
    return [status for method, path, status in proxy.seen if method == "GET" and path.endswith(key)]


def test_throttling_is_retried_by_botocore_and_then_served(proxied: tuple[S3Store, FaultProxy],
                                                           tmp_path: Path) -> None:
    store, proxy = proxied
    store.upload(_file(tmp_path / "t.bin"), "throttled/t.bin")
    proxy.inject("GET", 503, "SlowDown", times=2)
    assert store.read_bytes("throttled/t.bin", start=100, end=200) == PAYLOAD[100:200]
    assert _gets(proxy, "/cbm/throttled/t.bin") == [503, 503, 206]  # two throttled tries, then the range


def test_persistent_5xx_is_transient_and_names_the_object(proxied: tuple[S3Store, FaultProxy], bucket: str,
                                                          tmp_path: Path) -> None:
    store, proxy = proxied
    store.upload(_file(tmp_path / "d.bin"), "down/d.bin")
    proxy.inject("GET", 500, "InternalError", times=50)
    with pytest.raises(TransientError, match=rf"s3://{bucket}/cbm/down/d\.bin: HTTP 500 InternalError"):
        store.read_bytes("down/d.bin")
    # the first request and botocore's 5 retries (retries={"max_attempts": 5} counts retries), then Airflow's
    assert _gets(proxy, "/cbm/down/d.bin") == [500] * 6


def test_access_denied_is_not_retried(proxied: tuple[S3Store, FaultProxy], tmp_path: Path) -> None:
    store, proxy = proxied
    store.upload(_file(tmp_path / "a.bin"), "denied/a.bin")
    proxy.inject("GET", 403, "AccessDenied")
    with pytest.raises(StoreError, match="access denied"):
        store.read_bytes("denied/a.bin")
    assert _gets(proxy, "/cbm/denied/a.bin") == [403]
