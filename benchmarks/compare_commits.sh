#!/usr/bin/env bash
# Alternated runs of `bitconvert pack` and `convert --to gguf` from two commits on one master:
# wall time, CPU time and peak RSS per run, so a refactor can be shown to be no slower.
#
#   bash benchmarks/compare_commits.sh OLD_REV MASTER_DIR [ROUNDS]
#   (e.g. python3 benchmarks/synthetic.py /tmp/m6 --layers 6 first)
set -euo pipefail
old_rev=$1 master=$2 rounds=${3:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add -q --detach "$work/old" "$old_rev"
for round in $(seq "$rounds"); do
  for side in old new; do
    tree=$work/old; [ "$side" = new ] && tree=$root
    for job in pack gguf; do
      out=$work/out-$side-$job
      if [ "$job" = pack ]; then args=(pack "$master" "$out"); else args=(convert "$master" "$out.gguf" --to gguf); fi
      (cd "$tree" && PYTHONPATH=$tree /usr/bin/time -f "$round $side $job %e s wall %U+%S s cpu %M KB" \
        python3 -m bitconvert "${args[@]}" --json >/dev/null) 2>&1 | tail -1
      rm -rf "$out" "$out.gguf"
    done
  done
done
