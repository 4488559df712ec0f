#!/usr/bin/env bash
# Wall time of the README main job: the report suite, `eureka-kit report` with its defaults (the findings, quick
# profile: every cell in two worker processes; then every notebook in eureka_kit/workbench/suite.py SUITE under
# papermill; then the index). `make report` runs `eureka-kit selfcheck` (seconds) and this.
# Target: <= 10 minutes on 2 cores.
#
#   bash benchmarks/toy_suite_time.sh [--dry-run] [--out DIR] [extra eureka-kit report args...]
#
# --dry-run only prints the command. --out defaults to a fresh temp folder, so the repository's reports/ is not
# rewritten and no notebook is skipped as finished. The SFT base policy cache ($EUREKA_KIT_CACHE, default
# ~/.cache/eureka_kit) is used if present; whether it was warm is printed, because a cold cache adds the SFT
# build (~1.5 min) to the time. Last line: toy_suite_seconds=<n>.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
DRY=0
OUT=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
[ -n "$OUT" ] || OUT="$(mktemp -d -t toy_suite_XXXXXX)/reports"
CMD=("$BIN/eureka-kit" report --out "$OUT" ${ARGS[@]+"${ARGS[@]}"})
echo "command: ${CMD[*]}"
if [ "$DRY" = 1 ]; then
  exit 0
fi
CACHE="${EUREKA_KIT_CACHE:-$HOME/.cache/eureka_kit}"
KEY=$("$BIN/python" -c "from eureka_kit.engine.base_policy import cache_key, SFTConfig; print(cache_key(SFTConfig(), 0))")
if [ -d "$CACHE/base_policy/seed0-$KEY" ]; then echo "sft_cache=warm"; else echo "sft_cache=cold"; fi
echo "machine: $(nproc --all) cores (torch threads: ${OMP_NUM_THREADS:-default}), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
START=$(date +%s.%N)
"${CMD[@]}"
END=$(date +%s.%N)
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "toy_suite_seconds=$(python3 -c "print(f'{$END - $START:.1f}')")"
