# bench/transfer.gnuplot - GB/s against block size, from bench_transfer -p data
# (columns: MiB, kvtier PUT, kvtier GET, memcpy 1 thread, memcpy with as many
# threads as the daemon has copy workers, Redis SET, Redis GET; "?" = not measured).
# Called by bench/run.sh:
#   gnuplot -e "datafile='...'; outfile='...'" bench/transfer.gnuplot
set terminal pngcairo size 960,560 font ",11"
set output outfile
set title "kvtier host tier: bandwidth against block size (medians, same run, same buffers)"
set xlabel "block size (MiB)"
set ylabel "GB/s (10^9 bytes/s)"
set logscale x 2
set xtics ("1" 1, "4" 4, "16" 16, "64" 64)
set xrange [0.8:80]
set yrange [0:*]
set grid
set key outside right top
set datafile missing "?"
plot datafile using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f5fbf" title "kvtier PUT", \
     datafile using 1:3 with linespoints lw 2 pt 5 lc rgb "#2e9e44" title "kvtier GET", \
     datafile using 1:4 with linespoints lw 2 dt 2 pt 9 lc rgb "#555555" title "memcpy, 1 thread", \
     datafile using 1:5 with linespoints lw 2 dt 3 pt 11 lc rgb "#999999" title "memcpy, daemon's workers", \
     datafile using 1:6 with linespoints lw 1 pt 6 lc rgb "#c0392b" title "Redis SET", \
     datafile using 1:7 with linespoints lw 1 pt 4 lc rgb "#e67e22" title "Redis GET"
