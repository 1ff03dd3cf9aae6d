# Cumulative distribution of push latency (bench/run passes ks, plain, out, n).
set terminal pngcairo size 800,450 font ",10" noenhanced
set output out
set title "Push latency: commit acknowledged -> NOTIFY received (".n." receipts each)"
set xlabel "milliseconds after the commit was acknowledged"
set ylabel "receipts (%)"
set key bottom right
set grid
set yrange [0:100]
plot ks using 1:($2 * 100.0 / n) with steps lw 2 title "ks_engage / ks_disengage", \
     plain using 1:($2 * 100.0 / n) with steps lw 2 dt 2 title "plain NOTIFY (baseline)"
