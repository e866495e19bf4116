#!/bin/sh
# bench/run.sh - run every benchmark against a kvtierd of its own and write the
# results under bench/results/.
#
#   sh bench/run.sh [BUILD_DIR]        (make bench does this; BUILD_DIR defaults to build)
#
# Starts kvtierd on a socket and data directory in a fresh temporary directory
# (host tier 6 GiB, so the engine's 4 GiB context fits beside the other
# benchmarks' blocks; KVTIER_BENCH_CAPACITY overrides it), runs
# bench_lookup, bench_transfer and the example engine against it, stops the daemon
# with SIGTERM, and draws bench/results/transfer.png when gnuplot is installed.
# Then bench_t2 (the NVMe tier beside fio) runs with kvtierds of its own on a
# directory under /var/tmp; it draws bench/results/t2.png itself.
# Every step runs under timeout(1), so a hung daemon cannot hang the run.
# Exit status: 0 if every step succeeded, 1 otherwise (the other steps still run).
set -eu

BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
case $BUILD in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac

RESULTS="$ROOT/bench/results"
CAPACITY=${KVTIER_BENCH_CAPACITY:-6GiB}
ENGINE_TOKENS=${KVTIER_BENCH_TOKENS:-32768}

for b in bin/kvtierd bench/bench_lookup bench/bench_transfer; do
	if [ ! -x "$BUILD/$b" ]; then
		echo "bench/run.sh: $BUILD/$b is missing; run 'make' first" >&2
		exit 1
	fi
done

TMP=$(mktemp -d /tmp/kvtier-bench.XXXXXX)
SOCK="$TMP/kvtierd.sock"
DAEMON_PID=""
failed=0

stop_daemon() {
	[ -n "$DAEMON_PID" ] || return 0
	if kill -TERM "$DAEMON_PID" 2>/dev/null; then
		# SIGTERM lets in-flight copies finish; give it 20 s, then force it.
		i=0
		while kill -0 "$DAEMON_PID" 2>/dev/null && [ $i -lt 200 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		if kill -0 "$DAEMON_PID" 2>/dev/null; then
			echo "bench/run.sh: kvtierd did not exit after SIGTERM; killing it" >&2
			kill -KILL "$DAEMON_PID" 2>/dev/null || true
			failed=1
		fi
	fi
	if wait "$DAEMON_PID"; then
		daemon_rc=0
	else
		daemon_rc=$?
	fi
	DAEMON_PID=""
	if [ "$daemon_rc" -ne 0 ]; then
		echo "bench/run.sh: kvtierd exited with status $daemon_rc" >&2
		failed=1
	fi
}

cleanup() {
	stop_daemon
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$RESULTS"

# Let the daemon lock its host tier in RAM, as the systemd unit does
# (LimitMEMLOCK=infinity); where the limit cannot be raised it runs unlocked and
# says so in its log.
# shellcheck disable=SC3045 # dash and bash both have ulimit -l
ulimit -l unlimited 2>/dev/null || true

echo "bench/run.sh: starting kvtierd (host tier $CAPACITY) on $SOCK" >&2
"$BUILD/bin/kvtierd" -o "socket=$SOCK" -o "data_dir=$TMP/data" \
	-o "host_capacity=$CAPACITY" -o "log_level=info" 2>"$TMP/kvtierd.log" &
DAEMON_PID=$!

i=0
until [ -S "$SOCK" ]; do
	if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
		echo "bench/run.sh: kvtierd exited during start-up:" >&2
		cat "$TMP/kvtierd.log" >&2
		DAEMON_PID=""
		exit 1
	fi
	if [ $i -ge 300 ]; then
		echo "bench/run.sh: kvtierd did not create $SOCK within 30 s" >&2
		exit 1
	fi
	sleep 0.1
	i=$((i + 1))
done

# step NAME SECONDS COMMAND...: run one benchmark under a time limit, keep its
# status, and never stop the others.
step() {
	name=$1
	limit=$2
	shift 2
	echo "bench/run.sh: == $name" >&2
	if timeout --kill-after=10 "$limit" "$@"; then
		return 0
	else
		rc=$?
	fi
	if [ "$rc" -eq 124 ]; then
		echo "bench/run.sh: $name timed out after $limit s" >&2
	else
		echo "bench/run.sh: $name failed (exit status $rc)" >&2
	fi
	failed=1
	return 0
}

step bench_lookup 300 "$BUILD/bench/bench_lookup" -s "$SOCK" -o "$RESULTS/lookup.txt"
step bench_transfer 300 "$BUILD/bench/bench_transfer" -s "$SOCK" -o "$RESULTS/transfer.txt" \
	-p "$RESULTS/transfer.dat"

# The example engine prints its own report; keep it with the command that made it.
{
	echo "# kvtier-engine against kvtierd (host tier $CAPACITY), $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "\$ build/bin/kvtier-engine -s SOCKET --tokens $ENGINE_TOKENS"
} >"$RESULTS/engine.txt"
if [ -x "$BUILD/bin/kvtier-engine" ]; then
	# shellcheck disable=SC2016 # expanded by the inner sh, from its arguments
	step kvtier-engine 300 sh -c '"$1" -s "$2" --tokens "$3" >"$4" 2>&1' \
		sh "$BUILD/bin/kvtier-engine" "$SOCK" "$ENGINE_TOKENS" "$TMP/engine.out"
else
	echo "bench/run.sh: $BUILD/bin/kvtier-engine is missing; no engine run" >&2
	echo "(not run: $BUILD/bin/kvtier-engine was not built)" >>"$RESULTS/engine.txt"
	failed=1
fi
if [ -f "$TMP/engine.out" ]; then
	cat "$TMP/engine.out"
	cat "$TMP/engine.out" >>"$RESULTS/engine.txt"
fi

stop_daemon
cp "$TMP/kvtierd.log" "$RESULTS/kvtierd.log"

if command -v gnuplot >/dev/null 2>&1 && [ -s "$RESULTS/transfer.dat" ]; then
	if gnuplot -e "datafile='$RESULTS/transfer.dat'; outfile='$RESULTS/transfer.png'" \
		"$ROOT/bench/transfer.gnuplot"; then
		echo "bench/run.sh: wrote $RESULTS/transfer.png" >&2
	else
		echo "bench/run.sh: gnuplot failed; no transfer.png" >&2
		failed=1
	fi
else
	echo "bench/run.sh: gnuplot not installed (or no transfer data): no transfer.png" >&2
fi

# The NVMe tier: bench_t2 starts and stops its own kvtierds (the shared one above is
# stopped by now, so it does not compete for memory) and runs fio beside them.
if [ ! -x "$BUILD/bench/bench_t2" ]; then
	echo "bench/run.sh: $BUILD/bench/bench_t2 is missing; no NVMe tier figures" >&2
	failed=1
elif command -v gnuplot >/dev/null 2>&1; then
	step bench_t2 900 "$BUILD/bench/bench_t2" -D "$BUILD/bin/kvtierd" -o "$RESULTS/t2.txt" \
		-p "$RESULTS/t2.dat" -g "$RESULTS/t2.png"
else
	step bench_t2 900 "$BUILD/bench/bench_t2" -D "$BUILD/bin/kvtierd" -o "$RESULTS/t2.txt" \
		-p "$RESULTS/t2.dat"
fi

# Eviction policies simulated on the Mooncake trace beside Belady (no daemon; < 1 s).
TRACE=${KVTIER_BENCH_TRACE:-$ROOT/../shared/traces/synthetic_trace.jsonl}
if [ -x "$BUILD/bench/bench_policy" ] && [ -r "$TRACE" ]; then
	step bench_policy 120 "$BUILD/bench/bench_policy" -t "$TRACE" -o "$RESULTS/policy.txt"
else
	echo "bench/run.sh: bench_policy or the trace ($TRACE) is missing; no policy.txt" >&2
fi

# GPU benchmarks (built when the CUDA toolkit was found): each exits 77 without a
# CUDA device, which is a skip here, not a failure.
for gb in "$BUILD"/bench/bench_gpu_*; do
	[ -x "$gb" ] || continue
	name=$(basename "$gb")
	echo "bench/run.sh: == $name" >&2
	out="$RESULTS/$(echo "${name#bench_}" | tr _ -).txt"
	tmp="$out.new"
	if timeout --kill-after=10 1800 "$gb" -o "$tmp"; then
		mv "$tmp" "$out"
	else
		rc=$?
		rm -f "$tmp"
		if [ "$rc" -eq 77 ]; then
			echo "bench/run.sh: $name skipped: no CUDA device" >&2
		else
			echo "bench/run.sh: $name failed (exit status $rc)" >&2
			failed=1
		fi
	fi
done

# Describe what is in bench/results/ and the machine it came from.
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
cores=$(getconf _NPROCESSORS_ONLN)
mem=$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
l3=$(cat /sys/devices/system/cpu/cpu0/cache/index3/size 2>/dev/null || echo "unknown")
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit yet")
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then
	rev="$rev, with uncommitted changes"
fi
# Rows for files this script did not write (other benchmarks keep results here too).
# shellcheck disable=SC2016 # the backquotes are Markdown
other_results() {
	for f in "$RESULTS"/*; do
		name=$(basename "$f")
		case $name in
		README.md | lookup.txt | transfer.txt | transfer.dat | transfer.png | engine.txt | kvtierd.log) ;;
		t2.txt | t2.dat | t2.png | policy.txt | gpu-kernels.txt | gpu-transfer.txt | gpu-batch.txt) ;;
		*) printf '| `%s` | not written by bench/run.sh: from a benchmark run on its own (the file says how and when) |\n' "$name" ;;
		esac
	done
}
cat >"$RESULTS/README.md" <<EOF
# Benchmark results

Written by \`make bench\` (\`sh bench/run.sh\`) on $(date -u '+%Y-%m-%d %H:%M UTC') from source
revision $rev. Every figure stands beside a baseline measured in the same run, on
the same machine; rerun \`make bench\` to get figures for yours.

Machine: $cpu, $cores cores online, $mem RAM, L3 cache $l3, $(uname -sr).
Load average at the end of the run: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the
machine skews every figure; each result file prints the load when it was written).

Daemon: \`kvtierd -o host_capacity=$CAPACITY\`, everything else from the embedded default
configuration, on a socket and data directory in a temporary directory; its log
(\`kvtierd.log\`) says whether the tier got huge pages and was locked in RAM.

| file | what it is |
|---|---|
| \`lookup.txt\` | \`bench_lookup\`: one-key LOOKUP and PING round-trip latency (p50, p90, p99, p99.9, max, mean over 100,000 calls) beside a socketpair echo of 32 bytes; batched LOOKUP throughput in keys/s for batches of 1, 16, 256 and 4096 keys |
| \`transfer.txt\` | \`bench_transfer\`: host-tier PUT and GET GB/s for 1, 16 and 64 MiB blocks (4 in flight) beside memcpy between the same buffers (one thread, and as many threads as the daemon has copy workers) and redis-server SET/GET of the same blobs over a Unix socket; medians of interleaved rounds, the ratios, and the goals (>= 0.8x memcpy, >= 5x Redis); also the PUT rate of the very first fill of the tier, when its pages are touched for the first time |
| \`transfer.dat\` | the numbers behind \`transfer.png\`: block MiB, kvtier PUT, kvtier GET, memcpy 1 thread, memcpy N threads, Redis SET, Redis GET (GB/s, medians) |
| \`transfer.png\` | GB/s against block size for kvtier PUT/GET, memcpy and Redis (drawn when gnuplot is installed) |
| \`engine.txt\` | the example engine (\`kvtier-engine --tokens $ENGINE_TOKENS\`) run against the same daemon |
| \`kvtierd.log\` | the daemon's log for the run |
| \`t2.txt\` | \`bench_t2\`: the NVMe tier through kvtierds of its own (write-through, 1 GiB host tier): sequential write (PUT until every block is durable) and read (restart, GET in chain order with read-ahead) of the engine's 4 GiB Llama-3-8B context with the raw and bf16 codecs, and the cold page-in of an 8 GiB context (PREFETCH ahead of the GETs, and GET + read-ahead alone), beside fio (io_uring, O_DIRECT, same directory, block size and queue depth); medians, ratios, the >= 0.95x goal, device bytes and the daemon's counters |
| \`t2.dat\` | the numbers behind \`t2.png\`: test, fio, kvtier raw, kvtier bf16 (GB/s, medians; kvtier in logical bytes) |
| \`t2.png\` | those GB/s as clustered bars (drawn when gnuplot is installed) |
| \`gpu-kernels.txt\`, \`gpu-transfer.txt\`, \`gpu-batch.txt\` | \`bench_gpu_kernels\` (paged gather/scatter GB/s beside device-to-device cudaMemcpy), \`bench_gpu_transfer\` (GPU_PUT/GPU_GET through the daemon and a long-context page-in, beside pinned cudaMemcpyAsync) and \`bench_gpu_batch\` (a block's extents copied one cudaMemcpyAsync each vs one cudaMemcpyBatchAsync); written only on a machine with a CUDA device |
| \`policy.txt\` | \`bench_policy\`: the host tier's eviction policy (store/policy_lru.c, driven through its interface) beside plain LRU, S3-FIFO, ARC, SLRU, W-TinyLFU, LRU-2, LFU with dynamic aging, BIP and clairvoyant Belady, simulated on the Mooncake trace at 5% to 50% of its unique blocks: prefix hit ratios, the share of the Belady gap the best online policy closes, and where Belady's extra hits come from |
$(other_results)

Reading the transfer figures: with 1 and 16 MiB blocks, memcpy's sources and
destinations (8 and 128 MiB in all) can stay in a large last-level cache, while a
kvtier PUT always writes into a multi-GiB arena; at small sizes the memcpy baseline
is the cache's speed rather than memory's.

Reading the lookup figures: a round trip between two threads costs very different
amounts depending on whether they share a CPU (two context switches) or not (two
cross-CPU wake-ups, which in a virtual machine with idle vCPUs go through the
hypervisor). \`lookup.txt\` shows a plain socketpair echo in both placements; kvtierd's
loop thread is placed by the scheduler, so its PING and LOOKUP percentiles fall near
one or the other and can be bimodal (a p50 near the one-CPU echo and a p90 near the
two-CPU echo means both placements occurred during the run).
EOF

if [ "$failed" -ne 0 ]; then
	echo "bench/run.sh: some steps failed; see above" >&2
	exit 1
fi
echo "bench/run.sh: results in $RESULTS" >&2
