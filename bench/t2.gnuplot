# bench/t2.gnuplot - NVMe tier GB/s beside fio, from bench_t2 -p data (columns:
# test, fio on the raw device, kvtier with the raw codec, kvtier with the bf16 codec
# in logical bytes; "?" = not measured). bench_t2 -g calls it:
#   gnuplot -e "datafile='...'; outfile='...'" bench/t2.gnuplot
set terminal pngcairo size 1100,600 font ",11" noenhanced
set output outfile
set title "kvtier NVMe tier (T2): GB/s beside fio (io_uring, O_DIRECT, same block size and queue depth; medians)"
set ylabel "GB/s (10^9 bytes/s; kvtier: logical bytes)"
set yrange [0:*]
set grid ytics
set key outside bottom center horizontal
set datafile missing "?"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
plot datafile using 2:xtic(1) lc rgb "#555555" title "fio (raw device)", \
     datafile using 3 lc rgb "#1f5fbf" title "kvtier, raw codec", \
     datafile using 4 lc rgb "#2e9e44" title "kvtier, bf16 codec"
