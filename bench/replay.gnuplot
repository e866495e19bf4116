# bench/replay.gnuplot - prefix hit ratio against host-tier size: kvtier beside a
# plain LRU of the same capacities, without and with an NVMe tier, from
# bench_replay -p data (index 0: host tier only, index 1: with NVMe; columns:
# 1 host fraction, 2 host blocks, 3 NVMe blocks, 4 kvtier total, 5 LRU total
# (exclusive with NVMe), 6 infinite-capacity bound, 7 kvtier host, 8 kvtier NVMe,
# 9 LRU host, 10 LRU NVMe, 11 inclusive LRU total; "?" = not measured).
# Called by bench_replay -g:
#   gnuplot -e "datafile='...'; outfile='...'" bench/replay.gnuplot
set terminal pngcairo size 960,600 font ",11"
set output outfile
set title "Mooncake synthetic trace replayed through kvtierd: prefix hit ratio (same run)"
set xlabel "host tier (fraction of the trace's unique 512-token blocks)"
set ylabel "prefix hit ratio (hit blocks / blocks asked)"
set logscale x 2
set xtics ("1/32" 0.03125, "1/16" 0.0625, "1/8" 0.125, "1/4" 0.25, "1/2" 0.5, "1" 1)
set xrange [0.05:0.6]
set yrange [0:0.8]
set grid
set key inside right bottom box opaque
set datafile missing "?"
plot datafile index 0 using 1:6 with lines lw 1 dt 3 lc rgb "#000000" title "infinite capacity", \
     datafile index 0 using 1:4 with linespoints lw 2 pt 7 lc rgb "#1f5fbf" title "kvtier, host only", \
     datafile index 0 using 1:5 with linespoints lw 2 dt 2 pt 6 lc rgb "#1f5fbf" title "plain LRU, host only", \
     datafile index 1 using 1:4 with linespoints lw 2 pt 5 lc rgb "#c0392b" title "kvtier, host + NVMe (2x)", \
     datafile index 1 using 1:5 with linespoints lw 2 dt 2 pt 4 lc rgb "#c0392b" title "plain LRU, host + NVMe, exclusive", \
     datafile index 1 using 1:11 with linespoints lw 2 dt 3 pt 12 lc rgb "#e67e22" title "plain LRU, host + NVMe, inclusive"
