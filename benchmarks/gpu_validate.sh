#!/usr/bin/env bash
# Validate attnbench on a GPU machine in one call of about 7 minutes: install from carried wheels, run
# `attnbench doctor --device cuda`, the GPU default scenario and kernels-gpu.toml, render the report,
# then the CUDA tests with whatever time is left. Every step is capped so that the whole script ends
# within BUDGET_S (default 450 s); a step that fails or runs out of time is logged and the next one runs.
#
# Written for a machine that has python3 with a CUDA PyTorch, nvidia-ml-py, pandas, seaborn, tabulate,
# scipy, tqdm, psutil and pytest but no package registry: the rest (pydantic and its dependencies)
# comes as wheels in .whl/ (git-ignored), fetched beforehand on a machine with a registry:
#
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pydantic
#
# Output goes under $OUT (default ./gpu-out): log.txt (everything printed), doctor.txt (the doctor's
# table), results.tgz (results/<target>/ with REPORT.md and plots, ready to copy into the repository).
# Exit status: 0 when every step passed, else the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
BUDGET_S=${BUDGET_S:-450}
PY=${PYTHON:-python3}
RESULTS="$OUT/results"
mkdir -p "$OUT" "$RESULTS"
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1
failed=0

# step TITLE CAP_SECONDS COMMAND...: run with at most CAP seconds and never past the budget.
step() {
  local title=$1 cap=$2
  shift 2
  local left=$((BUDGET_S - SECONDS - 15))
  ((cap > left)) && cap=$left
  if ((cap < 20)); then
    echo "=== $title: skipped, ${left}s of the budget left" | tee -a "$LOG"
    failed=$((failed + 1))
    return 1
  fi
  echo "=== $title (cap ${cap}s): $*" | tee -a "$LOG"
  local t0=$SECONDS rc
  timeout --kill-after=15 "$cap" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "=== $title: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
  ((rc == 0)) || failed=$((failed + 1))
  return $rc
}

step "machine" 30 bash -c "nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv; \
  $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"
step "install" 90 bash -c "$PY -m pip install -q --no-index --find-links .whl pydantic && \
  $PY -m pip install -q --no-deps --no-build-isolation -e ."
step "doctor" 170 bash -c "set -o pipefail; $PY -m harness doctor --device cuda | tee '$OUT/doctor.txt'"
step "run gpu-default" 170 "$PY" -m harness run scenarios/gpu-default.toml --device cuda --quiet --out "$RESULTS"
step "run kernels-gpu" 150 "$PY" -m harness run scenarios/kernels-gpu.toml --device cuda --quiet --out "$RESULTS"
step "report" 40 "$PY" -m harness report "$RESULTS"
tar -czf "$OUT/results.tgz" -C "$OUT" results 2>>"$LOG" && rm -rf "$RESULTS"
step "cuda tests" 120 "$PY" -m pytest -m cuda -q -x -p no:cacheprovider
echo "=== done in ${SECONDS}s, $failed step(s) failed; results.tgz holds results/<target>/ with REPORT.md" | tee -a "$LOG"
[ -f "$OUT/doctor.txt" ] && cat "$OUT/doctor.txt"
exit "$failed"
