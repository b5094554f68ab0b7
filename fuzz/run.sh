#!/usr/bin/env bash
# Runs meshwork's fuzz targets with cargo fuzz, one after another, and reports per target the
# executions, the corpus and whether it found a crash (docs/TESTING.md, "Fuzzing").
#
#   fuzz/run.sh [SECONDS] [TARGET...]    each TARGET (default: every fuzz/fuzz_targets/*.rs)
#                                        for SECONDS (default 60); exits 1 if any target failed
#
# Inputs a target finds interesting are kept in fuzz/corpus/TARGET (not committed); the seeds
# in fuzz/seeds/TARGET are read but never written. A crash leaves its input in
# fuzz/artifacts/TARGET/; reproduce it with `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`
# (with RUSTC_BOOTSTRAP=1 on a stable toolchain). libFuzzer's output is in fuzz/logs/TARGET.log.
#
# Builds go to MESHWORK_FUZZ_TARGET_DIR (default ~/.cache/meshwork-fuzz-target), never to the
# workspace's CARGO_TARGET_DIR: the sanitizer flags would force a rebuild of everything there.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
cd "$fuzz_dir/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: fuzz/run.sh [SECONDS] [TARGET...]  (SECONDS is a positive whole number, not '$seconds')" >&2
  exit 2
fi
shift $(($# > 0 ? 1 : 0))

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  for file in "$fuzz_dir"/fuzz_targets/*.rs; do
    targets+=("$(basename "$file" .rs)")
  done
fi
for target in "${targets[@]}"; do
  if [ ! -f "$fuzz_dir/fuzz_targets/$target.rs" ]; then
    echo "no fuzz target '$target'; the targets are: $(cd "$fuzz_dir/fuzz_targets" && ls -- *.rs | sed 's/\.rs$//' | xargs)" >&2
    exit 2
  fi
done

# Largest input per target, in bytes: a little above the largest real input of its kind that
# matters (frames and records are small; documents and caches are the seeds' size and more).
max_len_of() {
  case "$1" in
    frame_decoder | frame_splitter) echo 4096 ;;
    record_decoder | record_mutation) echo 2048 ;;
    document_load) echo 32768 ;;
    derived_cache) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

export CARGO_TARGET_DIR="${MESHWORK_FUZZ_TARGET_DIR:-$HOME/.cache/meshwork-fuzz-target}"
export PATH="$HOME/.cargo/bin:$PATH"
# cargo fuzz needs unstable rustc flags (-Zsanitizer); this lets a stable toolchain take them.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

# libfuzzer-sys compiles libFuzzer, which is C++.
if ! command -v c++ >/dev/null 2>&1; then
  echo "== installing g++ (libfuzzer-sys builds libFuzzer)"
  apt-get update -qq && apt-get install -y -qq g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

mkdir -p "$fuzz_dir/logs"
failed=()
summary=()
for target in "${targets[@]}"; do
  log="$fuzz_dir/logs/$target.log"
  artifacts="$fuzz_dir/artifacts/$target"
  corpus="$fuzz_dir/corpus/$target"
  mkdir -p "$artifacts" "$corpus"
  corpora=("$corpus")
  if [ -d "$fuzz_dir/seeds/$target" ]; then
    corpora+=("$fuzz_dir/seeds/$target")
  fi
  before="$(find "$artifacts" -type f | sort)"
  echo "== fuzz $target for ${seconds}s (log: fuzz/logs/$target.log)"
  status=0
  cargo fuzz run "$target" "${corpora[@]}" -- \
    -max_total_time="$seconds" -max_len="$(max_len_of "$target")" -timeout=60 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?

  # libFuzzer's final stats, and the corpus as it last reported it ("corp: UNITS/SIZE"); all
  # absent when the target did not build.
  executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  per_second="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  corpus_size="$({ grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" || true; } | tail -n 1 | sed 's/^corp: //')"
  found="$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | sed '/^$/d')"
  if [ "$status" -ne 0 ] || [ -n "$found" ]; then
    failed+=("$target")
    outcome="FAILED (exit $status)"
    if [ -n "$found" ]; then
      outcome="$outcome, input: $(echo "$found" | sed "s|^$PWD/||" | xargs)"
    fi
    grep -m 1 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)|^error(\[E[0-9]+\])?:" "$log" | sed 's/^/   /' || true
  else
    outcome="no crash"
  fi
  line="$target: ${executions:-?} executions, ${per_second:-?} exec/s, corpus ${corpus_size:-?} (units/bytes), $outcome"
  echo "   $line"
  summary+=("$line")
done

echo "== fuzz summary (${seconds}s per target)"
printf '   %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]}; see fuzz/logs/ and reproduce with \`cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...\`" >&2
  exit 1
fi
