#!/usr/bin/env bash
# Build the stack's base images on this machine, for sites (and CI) that reach no image registry:
#   cbm-base:bookworm     Debian bookworm (debootstrap --variant=minbase) imported into the engine
#   cbm-python:bookworm   stands in for python:3.11-slim-bookworm   (Debian's Python 3.11)
#   cbm-postgis:bookworm  stands in for postgis/postgis:15-3.5       (Debian's PostgreSQL 15 + PostGIS 3)
#   cbm-redis:bookworm    stands in for redis:7.4.2-bookworm          (Debian's redis-server)
# Packages come from the Debian mirror during the build (host networking). Safe to run again: the
# base is made once (remove the image to remake it) and the engine's layer cache rebuilds the others
# only when their Dockerfile or files change. Run as root (debootstrap). Usage:
#   docker/local/build-images.sh && export $(docker/local/build-images.sh --env)
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = --env ]; then  # the compose variables that select these images
  echo CBM_PYTHON_IMAGE=cbm-python:bookworm CBM_POSTGIS_IMAGE=cbm-postgis:bookworm CBM_REDIS_IMAGE=cbm-redis:bookworm
  exit 0
fi
export DOCKER_BUILDKIT=0  # Debian's engine and client: the classic builder (no buildx plugin)
mirror="${CBM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if ! docker image inspect cbm-base:bookworm >/dev/null 2>&1; then
  root="$(mktemp -d /var/tmp/cbm-base.XXXXXX)"
  # debootstrap mounts /proc and /sys inside the tree: unmount before removing it
  trap 'umount -l "$root/proc" "$root/sys" 2>/dev/null || true; rm -rf --one-file-system "$root"' EXIT
  echo "build-images: debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
  rm -f "$root.log"
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" > "$root/etc/apt/sources.list"
  # The host's trust store goes into the base, so that a TLS-inspecting proxy between this machine
  # and PyPI is trusted inside the builds too (update-ca-certificates keeps files of this folder).
  install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host-trust-store.crt"
  install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - cbm-base:bookworm >/dev/null
  echo "build-images: cbm-base:bookworm imported"
fi
for name in python postgis redis; do
  docker build --quiet --network host -f "$name.Dockerfile" -t "cbm-$name:bookworm" . >/dev/null
  echo "build-images: cbm-$name:bookworm ready"
done
