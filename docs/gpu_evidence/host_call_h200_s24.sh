# Issue 19, Exp 10 prefill row (helper "host"). Run from .gpu/host on the device after the recipe's
# wheel install; ../host_base is the code at main (0cdebd0) for the bit-identity check.
# Usage: bash docs/gpu_evidence/host_call_h200_s24.sh TAG
set -o pipefail
TAG=${1:-call}
B=$(cd ../host_base && pwd)
for tree in "$PWD" "$B"; do
  ln -sfn ../hooks "$tree/drope_lens/hooks"; ln -sfn ../experiments "$tree/drope_lens/experiments"
  [ -e "$tree/drope_lens/data" ] || ln -sfn ../../../drope_lens/data "$tree/drope_lens/data"
done
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
echo "== 1. Exp 10 prefill, all lengths (part 2, the grid, skipped)"
timeout 300 python3 -m drope_lens.benchmarks.context_length_bench --workdir /tmp/bench --skip-grid \
  --out $OUT/ctx_$TAG.json --profile $OUT/profile_$TAG.txt 2>&1 | grep -v Warning | tee $OUT/ctx_$TAG.txt
echo "== 2. bit identity on CUDA: main's code vs this branch"
PYTHONPATH=/tmp/site:$B timeout 120 python3 drope_lens/benchmarks/activation_digest.py dump --device cuda \
  --out $OUT/digest_before.json 2>&1 | grep -v Warning | tail -6
PYTHONPATH=/tmp/site:$PWD timeout 120 python3 drope_lens/benchmarks/activation_digest.py dump --device cuda \
  --out $OUT/digest_after.json 2>&1 | grep -v Warning | tail -6
python3 drope_lens/benchmarks/activation_digest.py compare $OUT/digest_before.json $OUT/digest_after.json \
  | tail -30 | tee $OUT/digest_$TAG.txt
echo "== 3. tests on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_fused.py \
  tests/test_hook_points.py tests/test_block.py 2>&1 | tail -8 | tee $OUT/tests_$TAG.txt
