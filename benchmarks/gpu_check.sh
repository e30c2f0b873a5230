#!/usr/bin/env bash
# The prepared GPU check (issue 12): from a bare one-GPU machine (Python 3.12, torch + CUDA, no
# network, no megatron-core, no pydantic) to one summary table, in at most 8 minutes.
#
#   bash benchmarks/gpu_wheels.sh          # here, with network: benchmarks/gpu_wheels/*.whl (5.3 MB)
#   bash benchmarks/gpu_check.sh           # there, from the repository root
#
# Parts, each time-boxed with `timeout` and inside one overall deadline (GPU_CHECK_BUDGET_S, 480 s):
#   install   pip install --no-index --no-deps the carried wheels into $WORK/site (PYTHONPATH)
#   preflight imports (torch, megatron.core, pydantic, arcforge's trainer) and the GPU's name
#   data      a synthetic Megatron shard + tokenizer.json (benchmarks/bench_gpu_mfu.py --make-data)
#   smoke     arcforge train configs/train.proxy-100m.gpu.yaml --no-resume --steps 3 (bf16, cuda)
#   resume    the same command without --no-resume, --steps 3: must continue at step 4 from the checkpoint
#   parity    python -m arcforge.model.parity_check on a small derived config (proxy-100m, seq 256, 4 steps,
#             kernels sdpa + grouped on both devices, so both build the same parameters):
#             --device cpu, then --device cuda --compare-with the CPU file (bf16 tolerance, rtol 0.03)
#   mfu       benchmarks/bench_gpu_mfu.py: arcforge vs the plain-PyTorch reference (eager and compiled),
#             proxy-1b then proxy-100m at seq 4096, arcforge as each GPU config ships (proxy-1b: compiled
#             layers, arcforge's device dispatcher, fused AdamW; proxy-100m: eager, megatron's dispatcher)
#             at the reference's micro-batch, then levers, most telling first (the part is time-boxed by
#             GPU_CHECK_MFU_S, 420 s; mfu.json is rewritten after every run): 16 x 8 ($BIG: 12 x 8 on a GPU
#             with less than 100 GiB, an H100) evenly routed (lr 1e-6
#             keeps the initial routing, embeddings drawn at std 1.0 make it even: the table's router
#             max/mean column says which routing each speed was measured in) on real text when
#             benchmarks/gpu_text is carried (see data), else on the synthetic shard, with megatron's fused
#             cross-entropy and TF32 router GEMMs ($FAST: kernels.cross_entropy fused, fp32_matmul tf32),
#             then the same without them; 24 x 8 with $FAST where the GPU has 130 GiB or more ($HUGE: an
#             H200; none on an H100); the config's own batch, 8 x 4 accumulated, with $FAST, profiled
#             after its timed steps; 8 x 4 evenly routed with $FAST (on the real text if carried); the
#             first lever with inductor's coordinate-descent tuning of its generated kernels (a longer compile); proxy-1b eager with megatron's
#             dispatcher and foreach AdamW (the first H100 and H200 runs' default); proxy-100m compiled,
#             8 x 4, with $FAST
#             (GPU_CHECK_BASELINE=sdpa,sequential or local,sequential adds that baseline;
#             GPU_CHECK_REF_COMPILE=0 leaves out the compiled reference)
#   syncs     host-device syncs in one proxy-1b step by source line, megatron's dispatcher vs device
#             (benchmarks/gpu_syncs.py)
#   profile   torch.profiler over 2 steps after 3 timed ones of proxy-1b, as the config ships (compiled
#             layers: the inductor cache of the mfu part makes the compile short) and eager with megatron's
#             dispatcher: $WORK/profile-*.txt (the mfu part profiles its 8 x 4 lever the same way)
#   distopt   megatron's distributed optimizer (optimizer.distributed: true) on the parity config: its GPU
#             losses against the CPU file (the parity part's, or made here), then 2 steps, a checkpoint of
#             the sharded state and a resume for 2 more (last: it runs when the budget leaves time)
#
# Environment: GPU_CHECK_CPU=1 runs the CUDA-free parts on CPU instead (data, a --device cpu smoke and
# resume on a small derived config, the CPU side of the parity check, checks that the MFU benchmark
# refuses cleanly without CUDA, and runs one of its arcforge children on CPU with compiled layers;
# checks that the CPU path refuses optimizer.distributed in one line) --
# to test this script on a machine without a GPU.
# GPU_CHECK_WORK (default ${TMPDIR:-/tmp}/arcforge-gpu-check), GPU_CHECK_BUDGET_S (480), GPU_CHECK_MFU_S (420),
# GPU_CHECK_OUT (copy logs and results there at the end), PYTHON (default python3),
# GPU_CHECK_PARTS (comma list of smoke,resume,parity,mfu,syncs,profile,distopt to run; default all; install, preflight and
# data always run), GPU_CHECK_MFU_ARGS (more arguments for bench_gpu_mfu.py, e.g. --profile DIR).
# Logs: $WORK/<part>.log; summary also in $WORK/summary.md.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/arcforge-gpu-check}
CPU=${GPU_CHECK_CPU:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
START=$(date +%s)
rm -rf "$WORK/runs" "$WORK/parity" && mkdir -p "$WORK"
export ARCFORGE_RUNS="$WORK/runs" ARCFORGE_GPU_DATA="$WORK/data" PYTHONUNBUFFERED=1
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=ignore
SUMMARY=()
PARTS=${GPU_CHECK_PARTS:-smoke,resume,parity,mfu,syncs,profile,distopt}
want() { [[ ",$PARTS," == *",$1,"* ]]; }
# GPU_CHECK_OUT: a folder that gets the logs, summary.md and the JSON results when the script ends
# (the device tool's $OUT), without the data and checkpoints, which stay in $WORK
# (the device tool brings back 8 files: summary.md and mfu.json plain, everything else in one tarball)
copy_out() {
  [ -n "${GPU_CHECK_OUT:-}" ] || return 0
  mkdir -p "$GPU_CHECK_OUT" && cp "$WORK"/summary.md "$WORK"/mfu.json "$GPU_CHECK_OUT"/ 2>/dev/null
  (cd "$WORK" && tar czf "$GPU_CHECK_OUT/check-files.tgz" $(ls *.log *.json *.txt *.md 2>/dev/null)) 2>/dev/null; true
}
trap copy_out EXIT

# part NAME MAX_SECONDS DETAIL_CMD -- COMMAND...: run COMMAND under timeout (its max, capped by what is
# left of the budget), log to $WORK/NAME.log, then DETAIL_CMD (a shell snippet) prints one summary line.
part() {
  local name=$1 max=$2 detail=$3; shift 4
  local left=$((BUDGET - ($(date +%s) - START) - 5))
  local t=$((max < left ? max : left)) t0 rc status
  if [ "$t" -le 5 ]; then SUMMARY+=("| $name | skipped | 0 | no time left in the ${BUDGET} s budget |"); return 1; fi
  echo "== $name (timeout ${t} s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$t" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  local dt=$(($(date +%s) - t0))
  case $rc in 0) status=ok ;; 124|137) status="TIMEOUT (${t} s)" ;; *) status="FAILED (exit $rc)" ;; esac
  local info
  info=$(eval "$detail" 2>/dev/null | tr '\n' ' ' | cut -c1-300)
  [ $rc -ne 0 ] && { tail -n 15 "$WORK/$name.log" | sed 's/^/   | /'; info="${info:-$(grep -v '^\s*$' "$WORK/$name.log" | tail -n 1 | cut -c1-200)}"; }
  echo "   $status in ${dt} s: $info"
  SUMMARY+=("| $name | $status | $dt | ${info//|//} |")
  return $rc
}

# derive SRC DST key=value ...: a config with dotted keys replaced (values parsed as YAML)
derive() {
  "$PY" - "$@" <<'EOF'
import sys, yaml
from arcforge.runtime.config import read_yaml
src, dst, *pairs = sys.argv[1:]
cfg = read_yaml(src)
for pair in pairs:
    key, value = pair.split("=", 1)
    *path, last = key.split(".")
    node = cfg
    for k in path:
        node = node.setdefault(k, {})
    node[last] = yaml.safe_load(value)
open(dst, "w").write(yaml.safe_dump(cfg, sort_keys=False))
EOF
}

# the steps and losses of a run's train_log.csv, in one line
steps_of() {
  "$PY" -c "
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r['kind'] == 'train']
print('steps', ','.join(r['step'] for r in rows), '| loss %s -> %s' % (rows[0]['loss'][:6], rows[-1]['loss'][:6]),
      '| tokens/s %s' % rows[-1]['tokens_per_s'].split('.')[0], '| mtp %s aux %s' % (rows[-1]['mtp_loss'][:6], rows[-1]['aux_loss'][:6]))
" "$1"
}

# --- install ------------------------------------------------------------------------------------
if [ "$CPU" = 1 ]; then
  SUMMARY+=("| install | skipped | 0 | CPU mode: the wheels are cp312 for the GPU machine; using $PY's packages |")
elif ls benchmarks/gpu_wheels/*.whl >/dev/null 2>&1; then
  part install 90 "ls benchmarks/gpu_wheels/*.whl | wc -l | sed 's/$/ wheels into \$WORK\/site/'" -- \
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" benchmarks/gpu_wheels/*.whl
else
  SUMMARY+=("| install | skipped | 0 | no benchmarks/gpu_wheels/*.whl (run benchmarks/gpu_wheels.sh where there is network); using $PY's packages |")
fi

# --- preflight ------------------------------------------------------------------------------------
part preflight 90 "tail -n 1 \$WORK/preflight.log" -- "$PY" -c "
import warnings; warnings.simplefilter('ignore')
import sys, torch, pydantic, megatron.core
import arcforge.model.train, arcforge.model.parity_check
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA'
print('gpu_memory_gib', torch.cuda.get_device_properties(0).total_memory >> 30 if torch.cuda.is_available() else 0)
print(f'python {sys.version.split()[0]}, torch {torch.__version__}, megatron-core {megatron.core.__version__}, pydantic {pydantic.__version__}, {gpu}')
if not torch.cuda.is_available() and '$CPU' != '1':
    sys.exit('torch sees no GPU (set GPU_CHECK_CPU=1 for the CPU-only parts)')
" || { [ "$CPU" = 1 ] || { printf '%s\n' "${SUMMARY[@]}"; echo "preflight failed: stopping"; exit 1; }; }
# the mfu levers' large micro-batch: 16 x 8 where the GPU has the memory (77 GiB measured on an
# H200, set by an eager first micro-batch that compiled layers no longer run: about 62 expected;
# docs/benchmarks.md, "Peak memory of a compiled run"), else 12 x 8 (about 60 GiB on the old
# line, about 49 expected: fits an H100's 79 either way)
GPU_GIB=$(sed -n 's/^gpu_memory_gib //p' "$WORK/preflight.log" 2>/dev/null)
BIG="--mbs 16 --accum 8"
[ "${GPU_GIB:-0}" -lt 100 ] 2>/dev/null && BIG="--mbs 12 --accum 8"
# and a larger one where the GPU has 130 GiB or more (an H200): 24 x 8, about 112 GiB on the old line
# (6.9 GiB + 4.4 GiB per sequence of the micro-batch: that first eager micro-batch), about 86 expected
# now (12.4 + 3.06 per sequence); none elsewhere
HUGE=""
[ "${GPU_GIB:-0}" -ge 130 ] 2>/dev/null && HUGE="--mbs 24 --accum 8"

# --- data -----------------------------------------------------------------------------------------
# the synthetic shard, built here; real text only if carried: benchmarks/gpu_text/text.{bin,idx}, built
# after `make demo` by `python benchmarks/mfu_plan.py --text-from runs/demo/mixture/pretrain_1_general.blend.json`
# (git-ignored, like gpu_wheels/: carry both); with it the mfu part's first levers run on it
GPU_TEXT=${GPU_CHECK_TEXT:-$REPO/benchmarks/gpu_text}
TEXT=""
[ -f "$GPU_TEXT/text.idx" ] && TEXT="--set data.blend=[$GPU_TEXT/text]"
# even routing (lr 1e-6 keeps the initial routing; embeddings drawn at std 1.0 make it even: docs/model.md,
# "Routing at initialisation")
EVEN="--set optimizer.lr=1e-6 --set optimizer.min_lr=1e-7 --set model.overrides.embedding_init_std=1.0"
# the two kernel choices that change no module: megatron's fused loss, TF32 for the routers' fp32 GEMMs
FAST="--set kernels.cross_entropy=fused --set kernels.fp32_matmul=tf32"
part data 60 "grep -E 'synthetic data|real text' \$WORK/data.log || ls \$WORK/data" -- bash -c \
  "'$PY' benchmarks/bench_gpu_mfu.py --make-data '$WORK/data' && if [ -f '$GPU_TEXT/text.idx' ]; then
     echo \"real text: \$(( \$(stat -c %s '$GPU_TEXT/text.bin') / 2 )) tokens in $GPU_TEXT/text\"; else
     echo 'real text: none carried ($GPU_TEXT/text.idx)'; fi"

# --- smoke + resume -------------------------------------------------------------------------------
if [ "$CPU" = 1 ]; then
  CFG="$WORK/smoke.cpu.yaml"
  derive configs/train.proxy-100m.gpu.yaml "$CFG" device=cpu dtype=fp32 threads=1 model.seq_length=256 \
    batch.micro_batch_size=2 batch.global_batch_size=4 train.iters=8 checkpoint.interval=3 eval.interval=0 eval.iters=1
else
  CFG=configs/train.proxy-100m.gpu.yaml
fi
RUN_DIR=$("$PY" -c "from arcforge.runtime.config import read_yaml; print(read_yaml('$CFG')['output_dir'])")
want smoke && part smoke 150 "steps_of \$RUN_DIR/train_log.csv" -- "$PY" -m arcforge.cli train "$CFG" --no-resume --steps 3
want resume && part resume 150 "steps_of \$RUN_DIR/train_log.csv; grep -o -i 'resum[a-z]* [^,]*' \$WORK/resume.log | head -n 1" -- \
  bash -c "'$PY' -m arcforge.cli train '$CFG' --steps 3 && '$PY' -c \"
import csv, sys
steps = [int(r['step']) for r in csv.DictReader(open('$RUN_DIR/train_log.csv')) if r['kind'] == 'train']
sys.exit(0 if steps == list(range(1, 7)) else f'expected steps 1..6 after the resume, got {steps}')\""

# --- CPU/GPU loss parity --------------------------------------------------------------------------
PCFG="$WORK/parity.yaml"
derive configs/train.proxy-100m.gpu.yaml "$PCFG" name=parity model.seq_length=256 batch.micro_batch_size=2 \
  batch.global_batch_size=4 train.iters=4 optimizer.warmup_iters=1 output_dir="$WORK/parity" eval.interval=0 \
  kernels.attention=sdpa kernels.experts=grouped
if ! want parity; then
  :
elif [ "$CPU" = 1 ]; then
  part parity-cpu 150 "$PY -c \"import json; d = json.load(open('\$WORK/parity_cpu.json')); print('cpu losses', d.get('loss') or [s.get('loss') for s in d.get('steps', [])])\"" -- \
    "$PY" -m arcforge.model.parity_check "$PCFG" --device cpu --steps 4 --out "$WORK/parity_cpu.json"
else
  part parity 240 "grep -E '^(parity ok|MISMATCH)' \$WORK/parity.log | tail -n 2" -- bash -c "
    '$PY' -m arcforge.model.parity_check '$PCFG' --device cpu --steps 4 --out '$WORK/parity_cpu.json' &&
    '$PY' -m arcforge.model.parity_check '$PCFG' --device cuda --steps 4 --out '$WORK/parity_gpu.json' --compare-with '$WORK/parity_cpu.json'"
fi

# --- MFU ------------------------------------------------------------------------------------------
if ! want mfu; then
  :
elif [ "$CPU" = 1 ]; then
  # must refuse in one line (exit 2) without CUDA
  part mfu-refuses 60 "tail -n 1 \$WORK/mfu-refuses.log" -- bash -c \
    "'$PY' benchmarks/bench_gpu_mfu.py --data '$WORK/data'; test \$? -eq 2"
  # the arcforge child's code path on CPU (fp32, seq 128, 2 x 2 micro-batches, compiled layers with
  # the device dispatcher, profiled): what the GPU levers run, short of CUDA
  part mfu-child-cpu 180 "grep -o '.unique_graphs.: [0-9]*, .graph_breaks.: [0-9]*' \$WORK/mfu-child-cpu.log | tail -n 1 | tr -d '\\\"'" -- \
    "$PY" benchmarks/bench_gpu_mfu.py --child arcforge --preset proxy-100m --data "$WORK/data" --workdir "$WORK/mfu-cpu" \
    --variant sdpa,grouped,device --mbs 2 --accum 2 --seq 128 --steps 2 --warmup 2 --profile "$WORK" \
    --set device=cpu --set dtype=fp32 --set model.compile=layers
else
  part mfu "${GPU_CHECK_MFU_S:-420}" "grep -E '^\| proxy' \$WORK/mfu.log | sed 's/|  *|/|/g' | cut -d'|' -f2-7 | tr '\n' ';'" -- \
    "$PY" benchmarks/bench_gpu_mfu.py --data "$WORK/data" --presets proxy-1b,proxy-100m --steps 8 --warmup 2 --timeout 240 \
    --kernels auto ${GPU_CHECK_BASELINE:+"proxy-1b:$GPU_CHECK_BASELINE"} \
    --lever "proxy-1b:$BIG $TEXT $EVEN $FAST" \
    --lever "proxy-1b:$BIG $TEXT $EVEN" \
    ${HUGE:+--lever "proxy-1b:$HUGE $TEXT $EVEN $FAST"} \
    --lever "proxy-1b:--mbs 8 --accum 4 $FAST --profile $WORK" \
    --lever "proxy-1b:--mbs 8 --accum 4 $TEXT $EVEN $FAST" \
    --lever "proxy-1b:$BIG $TEXT $EVEN $FAST --set model.compile_options.coordinate_descent_tuning=true" \
    --lever "proxy-1b:--variant auto,auto,megatron --set model.compile=none --set optimizer.fused=false" \
    --lever "proxy-100m:--variant auto,auto,device --accum 4 --set model.compile=layers --set optimizer.fused=true $FAST" \
    --out "$WORK/mfu.json" $([ "${GPU_CHECK_REF_COMPILE:-1}" = 1 ] && echo --ref-compile) ${GPU_CHECK_MFU_ARGS:-}
  [ -f "$WORK/mfu.log" ] && grep -E '^\|' "$WORK/mfu.log"
fi

# --- syncs ----------------------------------------------------------------------------------------
# host-device syncs in one proxy-1b training step, by source line: megatron's dispatcher against
# kernels.dispatcher: device (benchmarks/gpu_syncs.py)
if want syncs && [ "$CPU" != 1 ]; then
  part syncs 150 "grep -E 'host syncs' \$WORK/syncs.log" -- "$PY" benchmarks/gpu_syncs.py --data "$WORK/data" \
    --out "$WORK/syncs.json"
fi

# --- profile --------------------------------------------------------------------------------------
# proxy-1b as configs/train.proxy-1b.gpu.yaml ships (compiled layers), then eager with megatron's
# dispatcher: torch.profiler over 2 steps after 2 + 3 (ops by CUDA time, and the GPU's busy time
# against the wall) in $WORK/profile-*.txt
if want profile && [ "$CPU" != 1 ]; then
  part profile 200 "head -q -n 1 \$WORK/profile-*.txt | tr '\n' ';'" -- "$PY" benchmarks/bench_gpu_mfu.py --data "$WORK/data" \
    --sides arcforge --presets proxy-1b --steps 3 --warmup 2 --timeout 190 --profile "$WORK" \
    --lever "proxy-1b:--variant auto,auto,megatron --set model.compile=none --set optimizer.fused=false"
fi

# --- distributed optimizer -----------------------------------------------------------------------
# the parity config with megatron's DistributedOptimizer (one rank: the same steps as the plain
# mixed-precision optimizer), then a save and resume of its sharded state
DCFG="$WORK/distopt.yaml"
derive "$PCFG" "$DCFG" name=distopt optimizer.distributed=true output_dir="$WORK/distopt"
if ! want distopt; then
  :
elif [ "$CPU" = 1 ]; then
  derive "$PCFG" "$WORK/distopt.cpu.yaml" device=cpu dtype=fp32 optimizer.distributed=true
  part distopt-refuses 60 "tail -n 1 \$WORK/distopt-refuses.log" -- bash -c \
    "'$PY' -m arcforge.cli train '$WORK/distopt.cpu.yaml'; test \$? -eq 2"
else
  rm -rf "$WORK/distopt"
  part distopt 180 "grep -E '^(parity ok|MISMATCH)' \$WORK/distopt.log | tail -n 2; steps_of \$WORK/distopt/train_log.csv" -- bash -c "
    { [ -f '$WORK/parity_cpu.json' ] || '$PY' -m arcforge.model.parity_check '$PCFG' --device cpu --steps 4 --out '$WORK/parity_cpu.json'; } &&
    '$PY' -m arcforge.model.parity_check '$DCFG' --device cuda --steps 4 --out '$WORK/distopt_gpu.json' --compare-with '$WORK/parity_cpu.json' &&
    '$PY' -m arcforge.cli train '$DCFG' --no-resume --steps 2 && '$PY' -m arcforge.cli train '$DCFG' --steps 2 && '$PY' -c \"
import csv, sys
steps = [int(r['step']) for r in csv.DictReader(open('$WORK/distopt/train_log.csv')) if r['kind'] == 'train']
sys.exit(0 if steps == [1, 2, 3, 4] else f'expected steps 1..4 after the resume, got {steps}')\""
fi

# --- summary --------------------------------------------------------------------------------------
{
  echo
  echo "GPU check: $(date -u +%FT%TZ), $(($(date +%s) - START)) s of ${BUDGET} s; mode: $([ "$CPU" = 1 ] && echo 'CPU-only (GPU_CHECK_CPU=1)' || echo GPU)"
  echo "| part | status | seconds | detail |"
  echo "|---|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
} | tee "$WORK/summary.md"
grep -q -E 'FAILED|TIMEOUT' "$WORK/summary.md" && exit 1 || exit 0
