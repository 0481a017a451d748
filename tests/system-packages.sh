#!/bin/sh
# What `make test` needs from the machine beside Python packages: systemd (the service
# test boots it), python3.11-venv (`make install` makes a venv on the system Python),
# PostgreSQL's server (the replica tests start one), Chromium (the status page's browser
# test) and promtool from Debian's prometheus package (the metrics check).
# As root, the missing ones are installed; otherwise one line says what to install.
set -eu
missing=""
[ -x /lib/systemd/systemd ] || missing="$missing systemd"
/usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3.11-venv"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "make test needs Debian packages that are missing: run sudo apt-get install$missing" >&2
    exit 1
fi
echo "installing Debian packages for the tests:$missing"
apt-get update -qq
# shellcheck disable=SC2086  # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
