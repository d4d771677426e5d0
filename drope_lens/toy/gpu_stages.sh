#!/bin/bash
# One device call of issue 20's toy training (`python -m drope_lens.toy.train`), stage by stage:
# corpus + RoPE pretraining + the first recipe, then one more recipe per invocation (each resumes
# from the checkpoints of the last), the checkpoints packed into $OUT as <= 15 MiB tar parts after
# every stage (a timeout loses at most the stage it cut), then the evaluation within the time left.
# usage: OUT=... drope_lens/toy/gpu_stages.sh BUDGET_SECONDS RECIPE [RECIPE ...]
#   PY: the python (default python3); TOY_WORK: work folder; TOY_ARGS: extra train arguments
set -u
BUDGET=$1; shift
PY=${PY:-python3}
W=${TOY_WORK:-/tmp/toyrun}
mkdir -p "$W" "$OUT"
LOG=$OUT/log.txt
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
pack() {
  rm -f "$OUT"/ckpt.tar.part-*
  (cd "$W" && tar -cf - rope drope-* tokenizer training.json corpus/corpus.json 2>/dev/null) | split -b 15M - "$OUT/ckpt.tar.part-"
  cp "$W"/training.json "$OUT"/ 2>/dev/null
  echo "== $(date -u +%T) packed after ${SECONDS}s: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
}
args=()
for recipe in "$@"; do
  args+=(--recipe "$recipe")
  left=$((BUDGET - SECONDS - 90))
  echo "== $(date -u +%T) train ${args[*]} ${TOY_ARGS:-} (${left}s allowed)" | tee -a "$LOG"
  timeout "$left" $PY -m drope_lens.toy.train --out "$W" "${args[@]}" ${TOY_ARGS:-} 2>&1 | tee -a "$LOG"
  pack
done
left=$((BUDGET - SECONDS))
done_args=()  # only recipes whose stage finished: evaluation must not train a cut one again (run 3 did)
for recipe in "$@"; do
  [ -f "$W/drope-$recipe/toy.json" ] && done_args+=(--recipe "$recipe")
done
echo "== $(date -u +%T) evaluate ${done_args[*]} with ${left}s left" | tee -a "$LOG"
timeout "$left" $PY -m drope_lens.toy.train --out "$W" --evaluate "${done_args[@]}" ${TOY_ARGS:-} 2>&1 \
  | grep -v "^pretrain\|^recalibrat\|^corpus" | tee -a "$LOG"
cp "$W"/evaluation.json "$OUT"/ 2>/dev/null
echo "== $(date -u +%T) done after ${SECONDS}s" | tee -a "$LOG"
