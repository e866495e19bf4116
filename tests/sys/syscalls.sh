#!/bin/sh
# syscalls.sh - the unit's SystemCallFilter= allows every system call kvtierd
# makes. Without systemd as PID 1 the filter cannot be applied, so the daemon runs
# under strace through a workload (start-up with notify and watchdog variables
# set and a small NVMe tier, an example engine PUTting and GETting, memstat, a
# reload, a SIGTERM) and every call it made must be in the allowed groups of
# kvtierd.service and in none of the denied ones, expanded with
# `systemd-analyze syscall-filter`:
#   filter_allows_what_the_daemon_uses
# A call the filter blocked would fail with EPERM (SystemCallErrorNumber=) under
# systemd, which is easy to miss in a test run without it.
#
# Prints "PASS syscalls/NAME", "FAIL syscalls/NAME: why" or "SKIP syscalls/NAME: why".
set -u

root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=${KVT_BIN_DIR:-$root/build/bin}
name=filter_allows_what_the_daemon_uses

for tool in strace systemd-analyze; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "SKIP syscalls/$name: $tool not installed"
		exit 0
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvt-syscalls.XXXXXX") || exit 1
strace_pid=""
pid=""
cleanup() {
	# The daemon first (strace may only detach from it), then its tracer.
	[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
	[ -n "$strace_pid" ] && kill "$strace_pid" 2>/dev/null && wait "$strace_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
	echo "FAIL syscalls/$name: $1"
	exit 1
}

# Expand "@group" (recursively) or a plain name into system call names.
expand() {
	for item in "$@"; do
		case $item in
		@*)
			systemd-analyze syscall-filter "$item" 2>/dev/null | sed 's/#.*//' | tr -d ' ' |
				grep . | grep -vx "$item" | while read -r sub; do expand "$sub"; done
			;;
		*) echo "$item" ;;
		esac
	done
}

unit=$root/systemd/kvtierd.service
allow=$(sed -n 's/^SystemCallFilter=\([^~].*\)/\1/p' "$unit")
deny=$(sed -n 's/^SystemCallFilter=~\(.*\)/\1/p' "$unit")
[ -n "$allow" ] || fail "no allow-list SystemCallFilter= line in $unit"
# shellcheck disable=SC2086 # words
expand $allow | sort -u >"$tmp/allow"
# shellcheck disable=SC2086
expand $deny | sort -u >"$tmp/deny"
[ -s "$tmp/allow" ] || fail "systemd-analyze syscall-filter expanded '$allow' to nothing"

# The daemon, traced from its first instruction.
sock=$tmp/kvtierd.sock
NOTIFY_SOCKET=$tmp/notify WATCHDOG_USEC=1000000 \
	strace -f -qq -o "$tmp/trace" "$bindir/kvtierd" -o socket="$sock" \
	-o data_dir="$tmp/data" -o host_capacity=128MiB -o workers=2 \
	-o nvme_capacity=128MiB -o nvme_segment_size=64MiB \
	</dev/null >"$tmp/daemon.log" 2>&1 &
strace_pid=$!
i=0
while ! grep -q 'listening on' "$tmp/daemon.log" && [ "$i" -lt 1000 ]; do
	kill -0 "$strace_pid" 2>/dev/null || break
	sleep 0.02
	i=$((i + 1))
done
grep -q 'listening on' "$tmp/daemon.log" || fail "kvtierd did not start under strace: $(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
pid=$(sed -n 's/.*starting (pid \([0-9]*\)).*/\1/p' "$tmp/daemon.log" | head -1)
[ -n "$pid" ] || fail "no pid in the daemon's log"

"$bindir/kvtier-engine" -s "$sock" --tokens 2048 >"$tmp/engine.out" 2>&1 ||
	fail "the example engine failed: $(tail -3 "$tmp/engine.out" | tr '\n' ' ')"
"$bindir/memstat" -s "$sock" >/dev/null 2>&1 || fail "memstat failed"
kill -HUP "$pid"
i=0
while ! grep -q 'configuration reloaded' "$tmp/daemon.log" && [ "$i" -lt 500 ]; do
	sleep 0.02
	i=$((i + 1))
done
kill -TERM "$pid"
wait "$strace_pid"
strace_pid=""
pid=""
grep -q 'stopped' "$tmp/daemon.log" || fail "kvtierd did not stop cleanly: $(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"

# "1234  name(args) = ..." and "1234  <... name resumed>" lines.
sed -n 's/^[0-9]* *\([a-z_0-9]*\)(.*/\1/p; s/^[0-9]* *<\.\.\. \([a-z_0-9]*\) resumed>.*/\1/p' \
	"$tmp/trace" | grep -vx 'exit\|exit_group\|execve' | sort -u >"$tmp/used"
[ -s "$tmp/used" ] || fail "strace recorded no system calls"
outside=$(comm -23 "$tmp/used" "$tmp/allow" | tr '\n' ' ')
denied=$(comm -12 "$tmp/used" "$tmp/deny" | tr '\n' ' ')
if [ -n "$outside" ] || [ -n "$denied" ]; then
	fail "not allowed by SystemCallFilter=$allow: '$outside'; denied by ~$deny: '$denied'"
fi
echo "  $(wc -l <"$tmp/used") distinct system calls, all allowed"
echo "PASS syscalls/$name"
