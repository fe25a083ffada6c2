# Sourced by the GPU recipes (gpu_refiner.sh, gpu_residual.sh): one log in $OUT/log.txt, the
# wheels of .device/ (MONAI: the device has torch) on the path, and the versions and GPU named.
# SKIPPIP=1 leaves the environment as it is (a CPU dry run in this checkout's venv).
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
T0=$(date +%s)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ -z "${SKIPPIP:-}" ]; then
  mkdir -p /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"
echo "setup $(($(date +%s) - T0)) s"
