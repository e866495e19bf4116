#!/bin/sh
# run.sh - runs every test program (tests/test_*, tests/itest_*) of one or more
# build directories, each under a time limit, prints their PASS/FAIL/SKIP lines
# prefixed with the build's variant ([asan] for a directory ending in asan), and
# ends with one line "N passed, N failed, N skipped". Exits non-zero if anything
# failed. A program that crashes or times out counts as one more failure, since
# the cases it never reached printed nothing.
#
# The shell tests in tests/sys/*.sh (systemd units, make install) check the tree
# rather than one build variant: they run once, after the programs, with the first
# BUILD_DIR that is not a sanitizer build (variant [sys]); they get $KVT_BIN_DIR
# and $KVT_BUILD_DIR, and print the same PASS/FAIL/SKIP lines.
#
# With --gpu it runs the GPU test programs (tests/gpu/gtest_*) instead, and no
# shell tests (make test-gpu). A program that exits 77 was skipped as a whole (no
# GPU): it counts as one skip unless it printed SKIP lines of its own.
#
# usage: sh tests/run.sh [--gpu] BUILD_DIR [BUILD_DIR...]
# env:   KVT_PROG_TIMEOUT  seconds per program (default 600)
set -u

gpu=0
if [ "${1:-}" = --gpu ]; then
	gpu=1
	shift
fi
if [ $# -lt 1 ]; then
	echo "usage: sh tests/run.sh [--gpu] BUILD_DIR [BUILD_DIR...]" >&2
	exit 2
fi

limit=${KVT_PROG_TIMEOUT:-600}
passed=0
failed=0
skipped=0

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvt-run.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prefix every line of stdin with "[variant] " (a last line without a newline too).
prefix() {
	while IFS= read -r line || [ -n "$line" ]; do
		printf '[%s] %s\n' "$1" "$line"
	done
}

count() {
	n=$(grep -c "^$1 " "$2" 2>/dev/null) || n=0
	echo "$n"
}

# Run one test program (the command in $4...) as VARIANT ($1) with KVT_BIN_DIR=$2
# and count its PASS/FAIL/SKIP lines; $3 names it in a failure of its own.
run_prog() {
	variant=$1 bindir=$2 name=$3
	shift 3
	out=$tmp/out
	rcfile=$tmp/rc
	: >"$out"
	echo 0 >"$rcfile"
	{
		KVT_BIN_DIR=$bindir \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
			timeout -k 10 "$limit" "$@" </dev/null 2>&1
		echo $? >"$rcfile"
	} | tee "$out" | prefix "$variant"
	rc=$(cat "$rcfile")
	p=$(count PASS "$out")
	f=$(count FAIL "$out")
	s=$(count SKIP "$out")
	# Exit 0, or 1 with the failures reported, is a program that finished.
	# Anything else (a crash, a timeout, exit 1 without saying why) loses
	# the lines of the cases it never ran: count it as one more failure.
	if [ "$rc" -eq 77 ] && [ "$f" -eq 0 ]; then
		[ "$s" -gt 0 ] || s=1
	elif [ "$rc" -ne 0 ] && { [ "$rc" -ne 1 ] || [ "$f" -eq 0 ]; }; then
		why=""
		if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
			why=" (timed out after ${limit} s)"
		elif [ "$rc" -gt 128 ]; then
			why=" (signal $((rc - 128)))"
		fi
		printf '[%s] FAIL %s: exited %s%s\n' "$variant" "$name" "$rc" "$why"
		f=$((f + 1))
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + s))
}

for dir in "$@"; do
	dir=${dir%/}
	case $dir in
	*asan) variant=asan ;;
	*) variant=$(basename "$dir") ;;
	esac
	if ! bindir=$(cd "$dir/bin" 2>/dev/null && pwd); then
		bindir="" # the GPU tests start no programs of the build
		if [ "$gpu" -eq 0 ]; then
			printf '[%s] FAIL %s: no bin directory (not built?)\n' "$variant" "$dir"
			failed=$((failed + 1))
			continue
		fi
	fi
	ran=0
	for prog in "$dir"/tests/test_* "$dir"/tests/itest_* "$dir"/tests/gpu/gtest_*; do
		case $prog in
		*/gpu/gtest_*) [ "$gpu" -eq 1 ] || continue ;;
		*) [ "$gpu" -eq 0 ] || continue ;;
		esac
		if [ ! -f "$prog" ] || [ ! -x "$prog" ]; then
			continue # an unmatched glob, or not a program
		fi
		ran=$((ran + 1))
		run_prog "$variant" "$bindir" "$(basename "$prog")" "$prog"
	done
	if [ "$ran" -eq 0 ]; then
		printf '[%s] FAIL %s: no test programs in %s/tests%s\n' "$variant" "$dir" "$dir" \
			"$([ "$gpu" -eq 1 ] && echo /gpu)"
		failed=$((failed + 1))
	fi
done

# tests/sys/*.sh, once (see the header).
srcdir=$(cd "$(dirname "$0")" && pwd)
for dir in "$@"; do
	[ "$gpu" -eq 0 ] || break
	dir=${dir%/}
	case $dir in *asan) continue ;; esac
	bindir=$(cd "$dir/bin" 2>/dev/null && pwd) || continue
	KVT_BUILD_DIR=$(cd "$dir" && pwd)
	export KVT_BUILD_DIR
	for script in "$srcdir"/sys/*.sh; do
		[ -f "$script" ] || continue
		run_prog sys "$bindir" "$(basename "$script")" sh "$script"
	done
	break
done

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
