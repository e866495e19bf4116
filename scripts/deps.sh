#!/bin/sh
# Install the Debian packages kvtier needs to build, test and benchmark, if any
# are missing. Quiet when everything is there; needs root otherwise.
set -eu

PKGS="build-essential pkg-config libxxhash-dev liburing-dev liblmdb-dev libzstd-dev
libsystemd-dev systemd redis-server libhiredis-dev fio gnuplot-nox strace libfuse3-dev fuse3"

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "kvtier: missing Debian packages:$missing" >&2
	echo "kvtier: run as root (or: sudo apt-get install$missing) and try again" >&2
	exit 1
fi
echo "kvtier: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when they are missing or a first try fails.
if ! apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
