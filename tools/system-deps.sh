#!/bin/sh
# System packages the test suite drives that pip cannot install (see the Makefile's system-deps).
# Each entry: the program the tests look for, then the Debian package that provides it.
# Graphviz is for `trainprov export --format svg/png/pdf` only (the dashboard needs none); the
# tests of the paths without it hide `dot` from PATH.
set -eu
missing=""
for pair in /usr/bin/chromium:chromium /usr/bin/dot:graphviz; do
  program=${pair%%:*}
  package=${pair#*:}
  [ -x "$program" ] || missing="$missing $package"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing what the tests need:$missing (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
  echo "the tests need:$missing; run: sudo apt-get install -y$missing" >&2
  exit 1
fi
