#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real, when one is missing:
# PostgreSQL (initdb/pg_ctl on a Unix socket), FreeRADIUS's radclient, pamtester with
# pam_radius_auth under pam_wrapper, Chromium with its driver for the browser tests, and
# openssl (docs/operations.md makes a self-signed certificate with it).
# As root it runs `apt-get update` once, then `apt-get install -y`. Not as root, it says what
# is missing; the tests that need a missing package then fail loudly in CI (CI is set).
# curl: docs/operations.md shows operators curl, and tests/docs runs those blocks.
set -euo pipefail
PACKAGES=(postgresql freeradius-utils pamtester libpam-radius-auth libpam-wrapper chromium chromium-driver openssl curl)
missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "debian-deps: not a Debian system; missing: ${missing[*]} (tests that need them will fail)" >&2
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "debian-deps: missing ${missing[*]}; run 'sudo apt-get install -y ${missing[*]}'" >&2
    exit 0
fi
echo "debian-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
