#!/usr/bin/env bash
# Runs, on a machine with a CUDA GPU, every check that needs one, in one go, and logs each
# stage to OUTDIR (default cuda-check/):
#
#   bash bench/cuda_check.sh [OUTDIR]          # PYTHON=python3 by default; STAGES to pick some
#   STAGES="tests ops step" bash bench/cuda_check.sh out/
#
# Stages (each bounded by `timeout`, so one hang cannot eat the others' time):
#   env    GPU, driver, torch and CUDA versions
#   tests  the CUDA-marked tests (kernels against their references, fp16 paths)
#   ops    bench/ops.py: bias_act, upfirdn2d and plane_sample, reference vs CUDA plugin
#   step   bench/step.py: eg3d-small and imagenet100 G forward and G+D step
#   train  a 2-kimg demo training run on the GPU, then bench/train.py for demo and imagenet100
#   suite  the whole test suite, in parallel when pytest-xdist is installed
# The script keeps going after a failing stage and prints a one-line summary per stage last.
set -u
out=${1:-cuda-check}
py=${PYTHON:-python3}
stages=${STAGES:-"env tests ops step train suite"}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
summary=()

stage() {  # stage NAME SECONDS CMD...: runs CMD under timeout, tees to OUTDIR/NAME.log
    local name=$1 secs=$2; shift 2
    [[ " $stages " == *" $name "* ]] || return 0
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$secs" bash -c "$*" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    summary+=("$name: rc=$rc in $((SECONDS - t0)) s")
}

stage env 30 "nvidia-smi; $py -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), torch.backends.cudnn.version())'; nvcc --version | tail -1; g++ --version | head -1"
stage tests 300 "$py -m pytest -q -m cuda -p no:cacheprovider --durations=10"
stage ops 90 "$py bench/ops.py --device cuda --repeats 50"
stage step 150 "$py bench/step.py --cfg eg3d-small --device cuda --repeats 20 --warmup 3 && $py bench/step.py --cfg imagenet100 --device cuda --batch 8 --classes 100 --resolution 256 --repeats 10 --warmup 2"
stage train 300 "rm -rf /tmp/cuda-demo && $py dataset_tool.py synthetic --dest /tmp/cuda-demo-data.zip --num-classes 4 --images-per-class 250 --resolution 64 --workers 8 && $py train.py --cfg demo --device cuda --kimg 2 --outdir /tmp/cuda-demo --data /tmp/cuda-demo-data.zip 2>&1 | tail -30; $py bench/train.py --cfg demo --device cuda && $py bench/train.py --cfg imagenet100 --device cuda --batch 8 --steps 5 && $py bench/train.py --cfg imagenet100 --device cuda --batch 8 --steps 5 --multiview"
xdist=$($py -c 'import xdist' 2>/dev/null && echo "-n 8")
stage suite 270 "$py -m pytest -q -p no:cacheprovider $xdist"

echo "=== summary"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
