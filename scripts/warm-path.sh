#!/usr/bin/env bash
# Instructions per request of every `warm_path` stack, for one release build
# (docs/benchmarks.md, "The warm path").
#
#   scripts/warm-path.sh
#
# Builds examples/examples/warm_path.rs with `--release`, runs each stack
# under `valgrind --tool=callgrind` for 2 000 and for 4 000 requests, and
# takes the difference of the two totals divided by 2 000 (the set-up
# cancels out). `hyper-util`, `pool` and `otel` are run a second time
# against two servers, round-robin: the cost of switching targets.
#
# Prints a Markdown table (the one in docs/benchmarks.md) and the totals
# behind it, and writes target/warm-path.json:
#
#   {"build": "<commit>", "instructions_per_request": {"raw": n, ...},
#    "two_targets_round_robin": {"hyper-util": n, "pool": n, "otel": n}}
#
# `<commit>` is `git rev-parse --short HEAD`, with `-dirty` appended when
# tracked files differ from it (the build is then not that commit's).
# Needs cargo and valgrind; takes a minute or two after the build.
set -euo pipefail

cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

stacks=(raw hyper-util pool span otel otel-unsampled affinity adaptive hyper-util-h2 pool-h2)
two_target_stacks=(hyper-util pool otel)
bin=target/release/examples/warm_path
out=target/warm-path.json

build=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  build+=-dirty
fi

cargo build --quiet --release -p tower-reuse-examples --example warm_path

totals=()
# Callgrind's instruction total for `warm_path ARGS...`.
collected() {
  local log
  if ! log=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" 2>&1); then
    printf 'warm_path %s failed:\n%s\n' "$*" "$log" >&2
    return 1
  fi
  sed -n 's/.*Collected : \([0-9][0-9]*\).*/\1/p' <<<"$log"
}

# Instructions per request of stack $1 against $2 servers, into $per_request.
measure() {
  local small large
  small=$(collected "$1" 2000 "$2")
  large=$(collected "$1" 4000 "$2")
  totals+=("$1 2000 $2: $small" "$1 4000 $2: $large")
  per_request=$(((large - small + 1000) / 2000))
}

declare -A one two
for stack in "${stacks[@]}"; do
  measure "$stack" 1
  one[$stack]=$per_request
done
for stack in "${two_target_stacks[@]}"; do
  measure "$stack" 2
  two[$stack]=$per_request
done

# A signed difference, with a space every three digits as the docs write it.
signed() {
  local n=$1 sign=+
  if ((n < 0)); then sign=-; n=$((-n)); fi
  ((n == 0)) && sign=
  printf '%s%s' "$sign" "$(sed -E ':a;s/([0-9])([0-9]{3})($| )/\1 \2\3/;ta' <<<"$n")"
}
grouped() { signed "$1" | tr -d +; }

echo "Build $build, $(valgrind --version), scripts/warm-path.sh:"
echo
echo '| stack | instructions per request | over `raw` | over `pool` |'
echo '| --- | --- | --- | --- |'
for stack in "${stacks[@]}"; do
  n=${one[$stack]}
  over_raw=$(signed $((n - one[raw])))
  over_pool=$(signed $((n - one[pool])))
  [ "$stack" = raw ] && over_raw=
  [ "$stack" = pool ] && over_pool=
  echo "| \`$stack\` | $(grouped "$n") | $over_raw | $over_pool |"
done
for stack in "${two_target_stacks[@]}"; do
  n=${two[$stack]}
  over_pool="$(signed $((n - two[pool]))) over \`pool\` to 2 targets"
  [ "$stack" = pool ] && over_pool=
  echo "| \`$stack\` to 2 targets round-robin | $(grouped "$n") | | $over_pool |"
done
echo
printf '`pool` / `hyper-util`: %s\n' \
  "$(awk -v p="${one[pool]}" -v h="${one[hyper-util]}" 'BEGIN { printf "%.2fx", p / h }')"
echo
echo 'The totals (warm_path STACK N K: instructions):'
echo
echo '```text'
printf '%s\n' "${totals[@]}"
echo '```'

json_map() {
  local -n map=$1
  shift
  local sep='' stack
  printf '{'
  for stack in "$@"; do
    printf '%s"%s": %s' "$sep" "$stack" "${map[$stack]}"
    sep=', '
  done
  printf '}'
}
printf '{"build": "%s", "instructions_per_request": %s, "two_targets_round_robin": %s}\n' \
  "$build" "$(json_map one "${stacks[@]}")" "$(json_map two "${two_target_stacks[@]}")" >"$out"
echo
echo "Written to $out."
