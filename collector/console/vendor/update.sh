#!/bin/sh
# Re-fetch the vendored chart library from the npm registry and check it
# against the pinned digest (the console embeds these files; nothing is
# fetched at build or run time).
set -eu
cd "$(dirname "$0")"
version=1.6.32
tarball_sha256=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -sSfL -o "$tmp/uplot.tgz" "https://registry.npmjs.org/uplot/-/uplot-$version.tgz"
echo "$tarball_sha256  $tmp/uplot.tgz" | sha256sum -c -
tar xzf "$tmp/uplot.tgz" -C "$tmp"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" .
cp "$tmp/package/LICENSE" uPlot.LICENSE
sha256sum -c SHA256SUMS
