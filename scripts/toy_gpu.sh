#!/bin/bash
# One device call of issue 20's toy training: every stage of `python -m drope_lens.toy.train`, the
# checkpoints packed into $OUT as <= 15 MiB tar parts, then the evaluation within the time left.
# usage: OUT=... scripts/toy_gpu.sh BUDGET_SECONDS [train args...]   (PY: the python, default python3)
set -u
BUDGET=$1; shift
PY=${PY:-python3}
W=${TOY_WORK:-/tmp/toyrun}
mkdir -p "$W" "$OUT"
LOG=$OUT/log.txt
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
echo "== $(date -u +%T) train: $*" | tee -a "$LOG"
$PY -m drope_lens.toy.train --out "$W" "$@" 2>&1 | tee -a "$LOG"
pack() {
  rm -f "$OUT"/ckpt.tar.part-*
  (cd "$W" && tar -cf - rope drope-* tokenizer training.json corpus/corpus.json 2>/dev/null) | split -b 15M - "$OUT/ckpt.tar.part-"
  cp "$W"/training.json "$OUT"/ 2>/dev/null
}
pack
echo "== $(date -u +%T) packed after ${SECONDS}s: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
LEFT=$((BUDGET - SECONDS))
echo "== $(date -u +%T) evaluate with ${LEFT}s left" | tee -a "$LOG"
timeout "$LEFT" $PY -m drope_lens.toy.train --out "$W" --evaluate "$@" 2>&1 | grep -v "^pretrain\|^recalibrate" | tee -a "$LOG"
cp "$W"/evaluation.json "$OUT"/ 2>/dev/null
echo "== $(date -u +%T) done after ${SECONDS}s" | tee -a "$LOG"
