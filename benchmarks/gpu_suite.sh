#!/usr/bin/env bash
# GPU measurements of issue 20 (step time μP/plain: fused/foreach AdamW, Muon, bf16 autocast, torch.compile
# overhead and recompiles, μTransfer at widths up to 2048 with throughput).  <= 8 minutes on one GPU.
#   bash benchmarks/gpu_suite.sh                      # CUDA
#   bash benchmarks/gpu_suite.sh --device cpu --quick # test the script on a CPU
#   bash benchmarks/gpu_suite.sh --device cpu --smoke # every section minimally (< 60 s; tests/test_benchmarks_smoke.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 python benchmarks/gpu_suite.py "$@"
