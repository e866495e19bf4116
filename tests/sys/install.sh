#!/bin/sh
# install.sh - `make install DESTDIR=TMP PREFIX=/usr` and what it produces:
#   install_succeeds          make install exits 0 (nothing is rebuilt: -o)
#   expected_tree             exactly the files listed in EXPECTED below, with
#                             executables executable and the .so symlinks in place
#   unit_names_installed_paths  ExecStart= of the installed service names
#                             /usr/sbin/kvtierd and /etc/kvtier/kvtierd.conf
#   installed_units_verify    systemd-analyze verify of the installed units prints
#                             nothing: ExecStart= pointed at the DESTDIR binary,
#                             MANPATH at the DESTDIR man pages, so Documentation=
#                             must name pages that were installed
#   pkg_config_flags          pkg-config --define-prefix finds kvtier.pc in the
#                             tree and gives -I/-L into it, -lkvtier; without
#                             --define-prefix, prefix is /usr
#   program_links_and_talks   a small program built with those flags links
#                             against the tree's libkvtier.so (ldd), and PINGs,
#                             PUTs and GETs a block through the tree's kvtierd
#   uninstall_leaves_only_config  make uninstall removes every file but the
#                             configuration in /etc
#
# Prints "PASS install/NAME", "FAIL install/NAME: why" or "SKIP install/NAME: why";
# exits 1 if anything failed. Run by tests/run.sh (with $KVT_BUILD_DIR).
set -u

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${KVT_BUILD_DIR:-$root/build}
failed=0
pass() { echo "PASS install/$1"; }
fail() { echo "FAIL install/$1: $2"; failed=1; }
skip() { echo "SKIP install/$1: $2"; }

EXPECTED="etc/kvtier/kvtierd.conf
usr/bin/memstat
usr/include/kvtier.h
usr/lib/libkvtier.a
usr/lib/libkvtier.so
usr/lib/libkvtier.so.0
usr/lib/libkvtier.so.0.1.0
usr/lib/pkgconfig/kvtier.pc
usr/lib/systemd/system/kvtierd.service
usr/lib/systemd/system/kvtierd.socket
usr/lib/sysusers.d/kvtier.conf
usr/lib/tmpfiles.d/kvtier.conf
usr/sbin/kvtierd
usr/share/doc/kvtier/OPERATIONS.md
usr/share/doc/kvtier/kvtierd.conf.example
usr/share/man/man1/memstat.1
usr/share/man/man3/kvtier.3
usr/share/man/man5/kvtierd.conf.5
usr/share/man/man8/kvtierd.8"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvt-install.XXXXXX") || exit 1
chmod 0755 "$tmp"
dest=$tmp/dest
daemon_pid=""
cleanup() {
	[ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

# This is a make run inside `make test`: start clean, and build nothing (-o),
# so the test installs exactly what was tested.
unset MAKEFLAGS MFLAGS MAKELEVEL
so_full=$(cd "$build/lib" 2>/dev/null && ls libkvtier.so.*.*.* 2>/dev/null | head -1)
mk() {
	make -C "$root" --no-print-directory BUILD="$build" DESTDIR="$dest" PREFIX=/usr \
		-o "$build/bin/kvtierd" -o "$build/bin/memstat" -o "$build/lib/libkvtier.a" \
		-o "$build/lib/$so_full" "$@"
}

if [ -z "$so_full" ] || [ ! -x "$build/bin/kvtierd" ]; then
	fail install_succeeds "nothing built in $build (run make first)"
	exit 1
fi
if ! mk install >"$tmp/make.out" 2>&1; then
	fail install_succeeds "make install failed: $(tail -5 "$tmp/make.out" | tr '\n' ' ')"
	exit 1
fi
pass install_succeeds

# ---- the tree -------------------------------------------------------------------
(cd "$dest" && find . \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort) >"$tmp/got"
echo "$EXPECTED" | LC_ALL=C sort >"$tmp/want"
why=""
if ! cmp -s "$tmp/got" "$tmp/want"; then
	why="$why files differ (< installed, > expected): $(diff "$tmp/got" "$tmp/want" | grep '^[<>]' | tr '\n' ' ');"
fi
for x in usr/sbin/kvtierd usr/bin/memstat; do
	[ -x "$dest/$x" ] || why="$why $x is not executable;"
done
[ "$(readlink "$dest/usr/lib/libkvtier.so")" = libkvtier.so.0 ] || why="$why libkvtier.so does not point to libkvtier.so.0;"
[ "$(readlink "$dest/usr/lib/libkvtier.so.0")" = "$so_full" ] || why="$why libkvtier.so.0 does not point to $so_full;"
if [ -n "$why" ]; then fail expected_tree "$why"; else pass expected_tree; fi

unit=$dest/usr/lib/systemd/system/kvtierd.service
if grep -qx 'ExecStart=/usr/sbin/kvtierd -c /etc/kvtier/kvtierd.conf' "$unit"; then
	pass unit_names_installed_paths
else
	fail unit_names_installed_paths "$(grep '^ExecStart=' "$unit")"
fi

# ---- verify the installed units ----------------------------------------------------
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v man >/dev/null 2>&1; then
	skip installed_units_verify "systemd-analyze or man not installed"
else
	mkdir "$tmp/units"
	sed "s|^ExecStart=/usr/sbin/kvtierd |ExecStart=$dest/usr/sbin/kvtierd |" "$unit" \
		>"$tmp/units/kvtierd.service"
	cp "$dest/usr/lib/systemd/system/kvtierd.socket" "$tmp/units/"
	(cd "$tmp/units" && MANPATH=$dest/usr/share/man systemd-analyze verify \
		kvtierd.service kvtierd.socket) >"$tmp/verify.out" 2>&1
	rc=$?
	if [ "$rc" -ne 0 ] || [ -s "$tmp/verify.out" ]; then
		fail installed_units_verify "exit $rc, output: $(tr '\n' ' ' <"$tmp/verify.out")"
	else
		pass installed_units_verify
	fi
fi

# ---- pkg-config and a program built with it -------------------------------------------
pc() { PKG_CONFIG_PATH=$dest/usr/lib/pkgconfig PKG_CONFIG_LIBDIR=/nonexistent pkg-config "$@"; }
if ! command -v pkg-config >/dev/null 2>&1; then
	skip pkg_config_flags "pkg-config not installed"
	skip program_links_and_talks "pkg-config not installed"
	exit "$failed"
fi
flags=$(pc --define-prefix --cflags --libs kvtier 2>"$tmp/pc.err")
rc=$?
prefix=$(pc --variable=prefix kvtier 2>/dev/null)
version=$(pc --modversion kvtier 2>/dev/null)
want="-I$dest/usr/include -L$dest/usr/lib -lkvtier"
if [ "$rc" -ne 0 ]; then
	fail pkg_config_flags "exit $rc: $(cat "$tmp/pc.err")"
elif [ "$(echo $flags)" != "$want" ]; then
	fail pkg_config_flags "got '$flags', expected '$want'"
elif [ "$prefix" != /usr ]; then
	fail pkg_config_flags "prefix is '$prefix', expected /usr"
elif ! grep -q "KVT_VERSION_STRING \"$version\"" "$dest/usr/include/kvtier.h"; then
	fail pkg_config_flags "Version '$version' is not the header's"
else
	pass pkg_config_flags
fi

cat >"$tmp/hello.c" <<'EOF'
/* Store a block through kvtierd and read it back: built only with pkg-config's flags. */
#include <stdio.h>
#include <string.h>
#include <kvtier.h>

int main(int argc, char **argv)
{
	kvt_conn *c;
	kvt_region *r;
	kvt_key key;
	int rc;

	if (argc != 2)
		return 2;
	if ((rc = kvt_conn_open(argv[1], &c)) != 0 || (rc = kvt_ping(c)) != 0) {
		fprintf(stderr, "connect/ping: %s\n", kvt_strerror(rc));
		return 1;
	}
	if ((rc = kvt_region_create(c, 2 << 20, &r)) != 0) {
		fprintf(stderr, "region: %s\n", kvt_strerror(rc));
		return 1;
	}
	unsigned char *base = kvt_region_base(r);
	for (int i = 0; i < (1 << 20); i++)
		base[i] = (unsigned char)(i * 7 + 3);
	memset(&key, 0, sizeof(key));
	key.b[0] = 0x1e;
	kvt_put_item put = { .key = key, .region = r, .offset = 0, .length = 1 << 20,
			     .desc = { .dtype = KVT_DTYPE_BF16, .tokens = 16 } };
	kvt_get_item get = { .key = key, .region = r, .offset = 1 << 20, .capacity = 1 << 20 };
	if ((rc = kvt_block_put(c, &put, 1)) != 0 || (rc = kvt_block_get(c, &get, 1)) != 0) {
		fprintf(stderr, "put/get: %s\n", kvt_strerror(rc));
		return 1;
	}
	if (get.length != (1 << 20) || memcmp(base, base + (1 << 20), 1 << 20) != 0) {
		fprintf(stderr, "got different bytes back\n");
		return 1;
	}
	printf("ok %s\n", kvt_version());
	kvt_region_destroy(r);
	kvt_conn_close(c);
	return 0;
}
EOF
cc=${CC:-cc}
why=""
# shellcheck disable=SC2086 # the flags are words
if ! $cc -o "$tmp/hello" "$tmp/hello.c" $flags >"$tmp/cc.out" 2>&1; then
	why="build failed: $(tr '\n' ' ' <"$tmp/cc.out")"
elif ! LD_LIBRARY_PATH=$dest/usr/lib ldd "$tmp/hello" | grep -q "libkvtier.so.0 => $dest/usr/lib/libkvtier.so.0"; then
	why="does not load the tree's library: $(LD_LIBRARY_PATH=$dest/usr/lib ldd "$tmp/hello" | grep kvtier)"
else
	# The tree's daemon, on a socket of its own.
	"$dest/usr/sbin/kvtierd" -o socket="$tmp/kvtierd.sock" -o data_dir="$tmp/data" \
		-o host_capacity=64MiB -o workers=2 -o nvme_capacity=0 \
		</dev/null >"$tmp/daemon.log" 2>&1 &
	daemon_pid=$!
	i=0
	while ! grep -q 'listening on' "$tmp/daemon.log" && [ "$i" -lt 500 ]; do
		kill -0 "$daemon_pid" 2>/dev/null || break
		sleep 0.02
		i=$((i + 1))
	done
	if ! grep -q 'listening on' "$tmp/daemon.log"; then
		why="the installed kvtierd did not start: $(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
	elif ! out=$(LD_LIBRARY_PATH=$dest/usr/lib "$tmp/hello" "$tmp/kvtierd.sock" 2>&1); then
		why="the program failed: $out"
	elif [ "$out" != "ok $version" ]; then
		why="the program said '$out'"
	fi
	kill "$daemon_pid" 2>/dev/null
	wait "$daemon_pid"
	rc=$?
	daemon_pid=""
	[ -z "$why" ] && [ "$rc" -ne 0 ] && why="kvtierd exited $rc after SIGTERM"
fi
if [ -n "$why" ]; then fail program_links_and_talks "$why"; else pass program_links_and_talks; fi

# ---- uninstall ------------------------------------------------------------------------
if ! mk uninstall >"$tmp/make.out" 2>&1; then
	fail uninstall_leaves_only_config "make uninstall failed: $(tail -3 "$tmp/make.out" | tr '\n' ' ')"
else
	left=$(cd "$dest" && find . \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort | tr '\n' ' ')
	if [ "$left" != "etc/kvtier/kvtierd.conf " ]; then
		fail uninstall_leaves_only_config "left behind: $left"
	else
		pass uninstall_leaves_only_config
	fi
fi

exit "$failed"
