#!/usr/bin/env bash
# The RESULTS.md GPU runs by name, in the order given, each cut to what is left of a deadline ($DEADLINE seconds
# from the start, default 570: inside one 600 s device call). Needs .gpu from benchmarks/gpu_bundle.sh (carry it):
#     DEADLINE=560 bash benchmarks/gpu_queue.sh s1 sae masked fused 2>&1 | tee $OUT/log.txt
# Tasks: s1 s1pack sae masked fused fusedbefore (needs .gpu/before = git archive fa06356 harness benchmarks)
# s7 stacked lm tests. Outputs land in $OUT (at most 8 files come back).
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1
T0=$(date +%s); DL=${DEADLINE:-570}
SITE=/root/site
if [ ! -d $SITE/ray ]; then mkdir -p $SITE && tar -C $SITE -xJf .gpu/gpusite.tar.xz; fi
export PYTHONPATH=$SITE
[ -d $SITE/mnist ] || python3 benchmarks/gpu_mnist.py unpack $SITE .gpu/mnist_u8.npz.xz
R=/root/results; mkdir -p $R $OUT
left() { echo $(( DL - ($(date +%s) - T0) )); }
log() { echo "=== $* [t=$(( $(date +%s) - T0 )) s, left $(left) s]"; }
quiet() { grep -v -E "^\s*$|Warning|warn|INFO|it/s\]|^\(|Trial status|│|╭|╰|├"; }  # Ray's and tqdm's noise
run_t() { local want=$1; shift; local l; l=$(left); local t=$(( want < l ? want : l )); if [ $t -lt 20 ]; then echo "SKIP (no time): $*"; return 1; fi; timeout $t "$@"; echo "rc $?"; }
log start; nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import ray, polars, torch, triton; print('ray', ray.__version__, 'polars', polars.__version__, 'torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tail -1
for task in "$@"; do
  log "$task"
  case $task in
    s1)
      run_t ${S1_T:-480} python3 benchmarks/s1_end_to_end.py --loop-points 5 --out $OUT/s1_timings.json -- \
        --paper --device cuda --retriever torch --gpus-per-trial 0.0625 --cpus-per-trial 1 --out-dir $R/s1 2>&1 \
        | quiet | tail -80
      cp $R/s1/summary.parquet $OUT/s1_summary.parquet; cp $R/s1/figure.png $OUT/s1_figure.png
      tar -C $R -czf $OUT/s1_rows.tgz s1/sweeps/model_scaling/rows s1/run.json 2>/dev/null; ls -la $OUT ;;
    s1pack)
      run_t 200 python3 benchmarks/s1_end_to_end.py --loop-points 2 -- --paper --device cuda --retriever torch \
        --sizes 40818 --seeds 0 --gpus-per-trial 1 --cpus-per-trial 1 --out-dir $R/s1one 2>&1 \
        | quiet | tail -30 ;;
    stacked) run_t 300 python3 benchmarks/stacked_seeds.py --sizes 280 1268 4430 11770 40818 --seeds 0 1 2 3 4 \
        --epochs 2 --device cuda --json $OUT/stacked.json 2>&1 | grep -v -E "Warning|warn" | tail -12 ;;
    sae) run_t 150 python3 benchmarks/sae_train.py --device cuda 2>&1 | tail -30 ;;
    masked) run_t 150 python3 benchmarks/masked_ttt.py --device cuda 2>&1 | tail -30 ;;
    fused) run_t 240 python3 benchmarks/ttt_linear.py --device cuda --precisions fp16-state tf32 --fused-b 256 --min-time 2 \
        --json $OUT/fused_after.json 2>&1 | tail -40 ;;
    fusedbefore) (cd .gpu/before && run_t 240 python3 benchmarks/ttt_linear.py --device cuda --precisions fp16-state tf32 \
        --fused-b 256 --min-time 2 2>&1 | tail -40) ;;
    s7) # a run cut off part way is finished by the same task in a second call while the machine is warm: the
        # embeddings in /root/s7data and the trained head in $R/s7's cache are reused (the benchmark says so);
        # a cut-off run's Ray may linger and hold GPU memory: end it first
        pkill -9 -f "raylet|gcs_server|ray::|dashboard.py" 2>/dev/null; sleep 1
        run_t ${S7_T:-560} python3 benchmarks/s7_imagenet_shape.py --folder /root/s7data -- --paper --device cuda \
        --retriever torch --out-dir $R/s7 2>&1 | quiet | tail -50
        cp $R/s7/table2.md $R/s7/run.json $OUT/ 2>/dev/null ;;
    lm) run_t 400 python3 benchmarks/lm_ttt.py --device cuda --shape 0.5B 7B --skip-loop --compile --fuse both \
        --json $OUT/lm_ttt.json 2>&1 | grep -v -E "Warning|warn" | tail -40 ;;
    tests) run_t 120 python3 -m pytest -q -p no:cacheprovider -x tests/test_paper_recipe.py tests/test_linear_fused.py 2>&1 | tail -5 ;;
  esac
done
log end
