#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian/Ubuntu machine; safe to run again.
#   system: PostgreSQL + PostGIS (the distribution's versions), Chromium for UI checks, proj-data (geoid grids),
#           Pango and poppler-utils for the PDF audit reports, redis-server (the Celery executor's broker,
#           run as a project-local process by `cbm airflow start --executor celery`)
#           Docker (docker.io, docker-compose, debootstrap) for the Docker stack test, where available
#   python: .venv with the pinned requirements (uv), the project in editable mode
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
apt_install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; }
pg_version() {  # major version of the distribution's default PostgreSQL
  apt-cache depends postgresql 2>/dev/null | sed -n 's/.*Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -1
}
if ! ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  ver="$(pg_version)"
  if [ -z "$ver" ]; then echo "install.sh: cannot tell the distribution's PostgreSQL version" >&2; exit 1; fi
  need_apt+=("postgresql-$ver" "postgresql-$ver-postgis-3")
fi
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium chromium-driver)
# GDAL's ogrinfo: the OGC API - Features client of the REST API tests
command -v ogrinfo >/dev/null 2>&1 || need_apt+=(gdal-bin)
# EGM96 geoid grid: the Rome test DEM (and SRTM) give heights above EGM96; CARD-BS adds the geoid
[ -f /usr/share/proj/egm96_15.gtx ] || need_apt+=(proj-data)
# audit reports: weasyprint renders PDFs with Pango; tests look at the pages with pdftoppm
ldconfig -p 2>/dev/null | grep -q libpangoft2-1.0 || need_apt+=(libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core)
command -v pdftoppm >/dev/null 2>&1 || need_apt+=(poppler-utils)
# Celery broker: `cbm airflow start --executor celery` and the Celery test start their own instance
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "${#need_apt[@]}" -gt 0 ]; then
  [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock | head -1)" ] || $SUDO apt-get update -qq
  # stale package lists give 404s: refresh them once and try again
  apt_install "${need_apt[@]}" || { $SUDO apt-get update -qq && apt_install "${need_apt[@]}"; }
fi
# The Docker stack test (tests/test_docker_stack.py): Debian's engine and compose, debootstrap for the
# locally built base images. Optional: without them that one test is skipped, saying why.
need_docker=()
command -v dockerd >/dev/null 2>&1 || need_docker+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need_docker+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need_docker+=(debootstrap)
if [ "${#need_docker[@]}" -gt 0 ]; then
  [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock | head -1)" ] || $SUDO apt-get update -qq
  apt_install "${need_docker[@]}" || echo "install.sh: could not install ${need_docker[*]}: the Docker stack test will be skipped" >&2
fi
# the Debian package starts a cluster of its own on 5432; ours runs beside it and needs none
if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
  pg_lsclusters -h | while read -r v name _; do $SUDO pg_ctlcluster "$v" "$name" stop >/dev/null 2>&1 || true; done
fi
# the Debian package may start a Redis of its own on 6379 (systemd); ours runs as a project-local process
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  $SUDO systemctl stop redis-server >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip >/dev/null
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.8"
.venv/bin/uv pip install -q --python .venv/bin/python -r requirements.txt
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
# JRC's CbM client library, for the test that runs it against our API (tests/jrc_client/requirements.txt):
# a folder of its own, never imported by the project
.venv/bin/uv pip install -q --python .venv/bin/python --target .venv/var/jrc_client --no-deps \
  -r tests/jrc_client/requirements.txt
# Byte-compile the venv and the project: every `cbm` command and every Airflow task process then loads
# .pyc files instead of parsing its imports again (where PYTHONDONTWRITEBYTECODE is set, Python never
# writes them itself: `cbm --help` took 3.5 s). compileall skips what is up to date.
site_packages="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
.venv/bin/python -m compileall -q -j 0 "$site_packages" cbm_tasks dags plugins >/dev/null \
  || echo "install.sh: some files could not be byte-compiled (they are compiled when imported)" >&2
# Compile the Numba kernels into the venv's cache (cbm_tasks.ops.kernel_cache): no extraction compiles
.venv/bin/cbm kernels warm
echo "install.sh: ready (.venv, PostgreSQL/PostGIS, Chromium)"
