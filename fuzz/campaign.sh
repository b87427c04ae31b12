#!/bin/sh
# Runs every fuzz target for FUZZ_SECONDS (default 600) with -timeout=5 -rss_limit_mb=2048, in
# LANES parallel lanes (default 2), and prints one line per target: runs, exec/s, result.
# Logs go to $LOGS (default fuzz/target/campaign/). Build first: cargo +nightly fuzz build -O
set -eu
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-600}
LANES=${LANES:-2}
LOGS=${LOGS:-target/campaign}
mkdir -p "$LOGS"
targets=$(cargo +nightly fuzz list)
lane() { # index
  i=0
  for t in $targets; do
    if [ $((i % LANES)) -eq "$1" ]; then
      # The growing corpus (corpus/, not in git) first: libFuzzer writes new inputs there;
      # the committed seeds and regressions are read as extra corpus folders.
      mkdir -p "corpus/$t" "seeds/$t" "regressions/$t"
      if cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
          -timeout=5 -rss_limit_mb=2048 \
          -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$LOGS/$t.log" 2>&1; then
        result=ok
      else
        result="FOUND (see $LOGS/$t.log and artifacts/$t/)"
      fi
      runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | tail -1)
      secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$LOGS/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
      rate=$(grep -o 'exec/s: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | tail -1)
      echo "$t runs=${runs:-?} seconds=${secs:-?} exec/s=${rate:-?} $result" >>"$LOGS/summary.txt"
    fi
    i=$((i + 1))
  done
}
: >"$LOGS/summary.txt"
l=0
while [ $l -lt "$LANES" ]; do
  lane $l &
  l=$((l + 1))
done
wait
sort "$LOGS/summary.txt"
