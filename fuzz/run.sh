#!/usr/bin/env bash
# Builds the fuzz targets once and runs each for a time budget, seeded from
# fuzz/seeds/<target> and continuing the corpus in fuzz/corpus/<target>.
# Writes a table to fuzz/RESULTS.md (the "Latest run" section) and prints it.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s, every target)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Not part of .ci/run: it takes minutes. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(reference challenge route admission store_yaml connect_head)
fi

# NB: our crates forbid unsafe code, so AddressSanitizer buys little and costs
# most of the speed; debug assertions catch overflows. Release, no sanitizer.
flags=(--release --debug-assertions --sanitizer none)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo +nightly fuzz build "${flags[@]}"
bin="$CARGO_TARGET_DIR/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

rows=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="$CARGO_TARGET_DIR/$target.log"
    before=$(find "artifacts/$target" -type f | wc -l)
    set +e
    # NB: the binary itself, not `cargo fuzz run`, so a source edited during
    # the run does not rebuild between targets.
    "$bin/$target" "corpus/$target" "seeds/$target" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"$log" 2>&1
    status=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    after=$(find "artifacts/$target" -type f | wc -l)
    crashes=$((after - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes="exit $status"; fi
    rows+=("| $target | $seconds | ${execs:-?} | ${rate:-?} | $corpus | $crashes |")
    echo "$target: ${execs:-?} executions, ${rate:-?}/s, corpus $corpus, crashes $crashes (log $log)"
done

table=$(
    echo "| target | seconds | executions | exec/s | corpus | crashes |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
)
section="## Latest run ($(date -u +%Y-%m-%dT%H:%MZ), \`fuzz/run.sh $seconds\`)"
results=RESULTS.md
[ -f "$results" ] || printf '# Fuzzing results\n' >"$results"
# Replace the previous "Latest run" section, keep everything else.
python3 - "$results" "$section" "$table" <<'PY'
import re, sys
path, heading, table = sys.argv[1:4]
text = open(path).read()
text = re.sub(r"\n## Latest run.*?(?=\n## |\Z)", "", text, flags=re.S).rstrip("\n")
open(path, "w").write(f"{text}\n\n{heading}\n\n{table}\n")
PY
echo
echo "$section"
echo
echo "$table"
