#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim-bookworm from Debian's packages (no image registry needed):
# debootstrap a minimal bookworm with Debian's python3.11, then `docker import` it.
#   deploy/scripts/build-base.sh [TAG]      (default TAG: stamen-local/python:3.11-slim-bookworm)
# Needs root, debootstrap and a running docker engine (DOCKER_HOST). The rootfs tarball is cached in
# ${STAMEN_CACHE:-/var/tmp/stamen-ci}; delete it to rebuild from scratch.
set -euo pipefail
TAG="${1:-stamen-local/python:3.11-slim-bookworm}"
CACHE="${STAMEN_CACHE:-/var/tmp/stamen-ci}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,ca-certificates"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists"
  exit 0
fi
mkdir -p "$CACHE"
TARBALL="$CACHE/bookworm-python3.11-rootfs.tar"
if [ ! -s "$TARBALL" ]; then
  ROOTFS="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOTFS"' EXIT
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # the slim image's conventions: `python` and `python3` on PATH; no apt lists or docs
  ln -sf python3 "$ROOTFS/usr/bin/python"
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
  tar -C "$ROOTFS" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi
docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  -c 'CMD ["python3"]' \
  "$TARBALL" "$TAG" >/dev/null
echo "built base image $TAG"
