#!/usr/bin/env bash
# Builds the .deb and .rpm packages of tlsrelay and tlsrelay-sendmail into
# dist/out/ (or $OUT; the binary itself is always built to dist/out/), reproducibly: the same commit gives byte-identical
# packages (a -trimpath build without VCS stamping, every timestamp set to
# SOURCE_DATE_EPOCH, the commit's time unless set).
#
#   dist/build-packages.sh                 # VERSION from git, ARCH from go env
#   VERSION=1.2.0 ARCH=arm64 dist/build-packages.sh
#
# nfpm (v2.45.0, pinned in dist/tools/go.mod, a module of its own so its
# dependencies stay out of tlsrelay's) is built from there
# (`go build`, cached after the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/dist/out}
mkdir -p "$out"

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export ARCH=${ARCH:-$(go env GOARCH)}
if [ -z "${VERSION:-}" ]; then
  # A version both dpkg and rpm order correctly: 0.0.<commit time>+g<hash>.
  VERSION="0.0.${SOURCE_DATE_EPOCH}+g$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
fi
export VERSION

CGO_ENABLED=0 GOOS=linux GOARCH=$ARCH go build -trimpath -buildvcs=false \
  -ldflags "-s -w -buildid= -X main.version=$VERSION" -o "$root/dist/out/tlsrelay" ./cmd/tlsrelay
touch -d "@$SOURCE_DATE_EPOCH" "$root/dist/out/tlsrelay"

# nfpm reads the paths in its configuration from the current directory
# (the repository's root); it is built from its own module's directory.
# NFPM may name an nfpm binary built before.
nfpm_bin=${NFPM:-$out/.nfpm}
if [ -z "${NFPM:-}" ]; then
  (cd "$root/dist/tools" && go build -o "$nfpm_bin" github.com/goreleaser/nfpm/v2/cmd/nfpm)
fi
nfpm() { "$nfpm_bin" "$@"; }
for pkg in tlsrelay tlsrelay-sendmail; do
  for packager in deb rpm; do
    nfpm package --config "$root/dist/nfpm/$pkg.yaml" --packager "$packager" --target "$out/"
  done
done
ls -1 "$out"/*.deb "$out"/*.rpm
