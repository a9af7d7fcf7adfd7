#!/usr/bin/env bash
# Validate attnbench on a GPU machine in one call of at most BUDGET_S (default 300 s, so that a second
# call fits beside the first in a 15-minute allowance): install pydantic from carried wheels into a
# separate folder, run `attnbench doctor --device cuda` (each finding streamed to $OUT/doctor.txt as it
# completes), the quick GPU scenarios (gpu-quick.toml, kernels-gpu-quick.toml, whose production kernels,
# docs/backends.md, run where the image has their packages and are unsupported otherwise), then the CUDA tests
# without the FlexAttention matrix; with SERVING=1 also the serving scenario's GPU form (serving-gpu.toml:
# paged caches, 4-token steps, the 2k-prompt prefill and a chunked prefill), its cap added to the default
# budget (375 s). Every step is capped, the caps (plus each step's kill grace and the
# packaging reserve) must add up to no more than the budget, and a step that fails or runs out of time
# is logged and the next one runs. The report is rendered afterwards, on any machine, from results.tgz.
#
#   bash benchmarks/gpu_validate.sh --prepare   # on the machine with the git checkout, before sending it
#   bash benchmarks/gpu_validate.sh             # on the GPU machine, from the tree's root
#   bash benchmarks/gpu_validate.sh --dry-run   # anywhere: every step's plumbing and the budget, no GPU
#
# --prepare writes .attnbench-commit (the commit, clean or dirty: a tree sent without .git says which
# commit it is through it) and checks that .whl/ holds the pydantic wheels, fetched on a machine with a
# registry:
#
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pydantic
#
# Both are git-ignored: send them with the tree. The GPU machine needs python3 with a CUDA PyTorch,
# numpy, pandas, seaborn, tabulate, scipy, psutil and pytest; pydantic goes into $ATTNBENCH_DEPS
# (default /tmp/attnbench-deps), put on PYTHONPATH for this script only: the image's environment is
# left as it is. Without a git checkout, a commit file or $ATTNBENCH_COMMIT the script stops at once.
#
# Output under $OUT (default ./gpu-out): log.txt (everything printed), doctor.txt (one line per check
# start and per finding, written as they happen), results.tgz (results/<target>/ of both runs).
# Exit status: 0 when every step passed, 2 for a problem found before any step ran, else the number
# of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=device
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry-run ;;
  "") ;;
  *) echo "gpu_validate.sh: unknown option ${1}; use --prepare, --dry-run or nothing" >&2; exit 2 ;;
esac

COMMIT_FILE=.attnbench-commit
WHEELS=.whl

# ---------------------------------------------------------------------------------------------------
# The commit this tree is: git where there is a checkout, else the file --prepare wrote.

git_commit() {
  local sha state
  sha=$(git rev-parse HEAD 2>/dev/null) || return 1
  state=clean
  [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && state=dirty
  echo "$sha $state"
}

if [ "$MODE" = prepare ]; then
  recorded=$(git_commit) || { echo "gpu_validate.sh --prepare: not a git checkout" >&2; exit 2; }
  for wheel in pydantic-2 pydantic_core-; do
    if ! compgen -G "$WHEELS/$wheel*.whl" >/dev/null; then
      echo "gpu_validate.sh --prepare: no ${wheel%-*} wheel in $WHEELS/ (see the pip download line in this script)" >&2
      exit 2
    fi
  done
  echo "$recorded" >"$COMMIT_FILE"
  echo "wrote $COMMIT_FILE ($recorded); send the tree with $WHEELS/ and $COMMIT_FILE, then run: bash benchmarks/gpu_validate.sh"
  exit 0
fi

if [ -z "${ATTNBENCH_COMMIT:-}" ]; then
  recorded=$(git_commit) || recorded=$(cat "$COMMIT_FILE" 2>/dev/null) || recorded=
  ATTNBENCH_COMMIT=$recorded
fi
if [ -z "$ATTNBENCH_COMMIT" ]; then
  echo "gpu_validate.sh: no commit: not a git checkout, no $COMMIT_FILE and no \$ATTNBENCH_COMMIT; run --prepare where the checkout is" >&2
  exit 2
fi
export ATTNBENCH_COMMIT

# ---------------------------------------------------------------------------------------------------
# The budget: every cap, its kill grace and the packaging reserve within BUDGET_S.

KILL_S=5      # grace after a step's cap before it is killed
RESERVE_S=15  # kept for packaging the results and the summary
# Caps in seconds, in the order the steps run.
CAP_MACHINE=10 CAP_INSTALL=20 CAP_DOCTOR=85 CAP_RUN=65 CAP_KERNELS=50 CAP_TESTS=25
CAPS=("$CAP_MACHINE" "$CAP_INSTALL" "$CAP_DOCTOR" "$CAP_RUN" "$CAP_KERNELS" "$CAP_TESTS")
SERVING=${SERVING:-0}  # 1: also run scenarios/serving-gpu.toml, after the kernels scenario
CAP_SERVING=70
if [ "$SERVING" = 1 ]; then
  CAPS+=("$CAP_SERVING")
  BUDGET_S=${BUDGET_S:-$((300 + CAP_SERVING + KILL_S))}
fi
BUDGET_S=${BUDGET_S:-300}
planned=$RESERVE_S
for cap in "${CAPS[@]}"; do planned=$((planned + cap + KILL_S)); done
if ((planned > BUDGET_S)); then
  echo "gpu_validate.sh: the steps' caps, kill graces and reserve add to ${planned}s, over BUDGET_S=${BUDGET_S}s" >&2
  exit 2
fi

OUT=${OUT:-$PWD/gpu-out}
RESULTS="$OUT/results"
DEPS=${ATTNBENCH_DEPS:-${TMPDIR:-/tmp}/attnbench-deps}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$RESULTS"
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$DEPS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# One on-disk compile cache for every worker of every step: flex compiles once per shape.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/attnbench-inductor}
CUDA_TESTS="cuda and not flex"
failed=0
echo "=== $MODE of commit $ATTNBENCH_COMMIT, budget ${BUDGET_S}s (steps planned to ${planned}s)" | tee -a "$LOG"

# What a dry run runs in place of each step: the same entry points, without a GPU.
declare -A DRY=(
  [machine]="$PY -c 'import sys, torch; print(sys.version); print(torch.__version__)'"
  [install]="$PY -c 'import pydantic' || ls $WHEELS/pydantic-*.whl"
  [doctor]="$PY -m harness doctor --help >/dev/null && printf 'start\\tdry run\\n' >'$OUT/doctor.txt'"
  [run gpu-quick]="$PY -m harness plan scenarios/gpu-quick.toml"
  [run kernels-gpu-quick]="$PY -m harness plan scenarios/kernels-gpu-quick.toml && mkdir -p '$RESULTS/dry-run'"
  [run serving-gpu]="$PY -m harness plan scenarios/serving-gpu.toml >/dev/null"
  [cuda tests]="$PY -m pytest --collect-only -q -m '$CUDA_TESTS' -p no:cacheprovider tests/test_attention.py | tail -1"
)

# step TITLE CAP_SECONDS COMMAND...: run with at most CAP seconds and never past the budget; a dry run
# runs the step's DRY stand-in instead, through the same caps and bookkeeping.
step() {
  local title=$1 cap=$2
  shift 2
  local left=$((BUDGET_S - SECONDS - RESERVE_S - KILL_S))
  ((cap > left)) && cap=$left
  if ((cap < 5)); then
    echo "=== $title: skipped, ${left}s of the budget left" | tee -a "$LOG"
    failed=$((failed + 1))
    return 1
  fi
  echo "=== $title (cap ${cap}s): $*" | tee -a "$LOG"
  local t0=$SECONDS rc
  if [ "$MODE" = dry-run ]; then
    timeout --kill-after="$KILL_S" "$cap" bash -c "${DRY[$title]}" >>"$LOG" 2>&1
  else
    timeout --kill-after="$KILL_S" "$cap" "$@" >>"$LOG" 2>&1
  fi
  rc=$?
  echo "=== $title: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
  ((rc == 0)) || failed=$((failed + 1))
  return $rc
}

step "machine" "$CAP_MACHINE" bash -c "nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv; \
  $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"
step "install" "$CAP_INSTALL" bash -c "$PY -c 'import pydantic' 2>/dev/null || \
  $PY -m pip install -q --no-index --find-links $WHEELS --target '$DEPS' pydantic"
step "doctor" "$CAP_DOCTOR" "$PY" -m harness doctor --device cuda --stream "$OUT/doctor.txt"
step "run gpu-quick" "$CAP_RUN" "$PY" -m harness run scenarios/gpu-quick.toml --device cuda --quiet --out "$RESULTS"
step "run kernels-gpu-quick" "$CAP_KERNELS" "$PY" -m harness run scenarios/kernels-gpu-quick.toml --device cuda --quiet --out "$RESULTS"
if [ "$SERVING" = 1 ]; then
  step "run serving-gpu" "$CAP_SERVING" "$PY" -m harness run scenarios/serving-gpu.toml --device cuda --quiet --out "$RESULTS"
fi
tar -czf "$OUT/results.tgz" -C "$OUT" results 2>>"$LOG" && rm -rf "$RESULTS"
step "cuda tests" "$CAP_TESTS" "$PY" -m pytest -m "$CUDA_TESTS" -q -x -p no:cacheprovider
echo "=== done in ${SECONDS}s of ${BUDGET_S}s, $failed step(s) failed; results.tgz holds results/<target>/: \
render the report with attnbench report" | tee -a "$LOG"
[ -f "$OUT/doctor.txt" ] && cat "$OUT/doctor.txt"
exit "$failed"
