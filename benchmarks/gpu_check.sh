#!/usr/bin/env bash
# Every check of kernelscale that needs a GPU, in one run of about 5 minutes on an H100/H200:
#   1. the compiled Triton kernels against the torch reference (tests/test_triton_ops.py without
#      TRITON_INTERPRET) and the CUDA-only tests elsewhere (conversion on the GPU, live models);
#   2. benchmarks/bench_kernels.py --device cuda --sweep: GB/s of triton / torch / interpolate /
#      copy, and of the Triton dense kernel over its launch constants (rows per program × warps);
#   3. benchmarks/bench_convert.py --devices cpu,cuda on the synthetic SD 1.5 UNet: the GPU path
#      end to end against the CPU path.
# Needs python3 with torch (CUDA), triton, pytest, hypothesis, numpy, safetensors and tqdm;
# diffusers is optional (the SD 1.5 layout ships as benchmarks/sd15_unet_shapes.json).
#
# Usage, from the repository root:  bash benchmarks/gpu_check.sh [OUTDIR]
# Logs, kernels.csv and the markdown sections for docs/benchmarks.md go to OUTDIR (default:
# $OUT, else /tmp/kernelscale-gpu). Exit status: 0 when every step passed.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/kernelscale-gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET KERNELSCALE_BACKEND
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUTDIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local started=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - started)) s"
    [ "$rc" -eq 0 ] || failed+=("$name")
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
"$py" - <<'EOF' | tee "$out/versions.txt"
import platform, torch, triton
print(f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, "
      f"CUDA {torch.version.cuda}, device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
EOF
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device: nothing to check"; exit 2; }

step tests 240 "$py" -m pytest -q -p no:cacheprovider -o addopts="-ra" \
    tests/test_triton_ops.py tests/test_dispatch.py tests/test_resize.py tests/test_convert.py tests/test_stream.py tests/test_nn.py
step bench_kernels 180 "$py" benchmarks/bench_kernels.py --device cuda --sweep --csv "$out/kernels.csv"
step bench_convert 300 "$py" benchmarks/bench_convert.py --workdir /tmp/kernelscale-bench --repeat 2 --skip-naive \
    --devices cpu,cuda --section "## convert on a GPU machine (SD 1.5 UNet, fp16, --scale 2, --device cpu vs cuda)" \
    --write-docs "$out/benchmarks_section.md"
rm -rf /tmp/kernelscale-bench

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (logs in $out)"
    exit 1
fi
echo "all GPU checks passed (logs in $out)"
