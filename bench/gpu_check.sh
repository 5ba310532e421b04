#!/usr/bin/env bash
# The vLLM checks on a CUDA GPU (a machine lent through the device tool, or any GPU host), in under 8 minutes on
# one H100: the vLLM tests (the files of `pytest -m vllm`; what they expect of the device follows vLLM's build)
# on vLLM's CUDA build, then the generation bench's vLLM arm beside ours in bf16 on the same workload. Logs,
# JUnit XML and the bench's JSON record go to $OUT (default .medssr/gpu-check).
#
# Needs, in $PYTHON (default python3), the GPU set this repository pins: torch 2.13.0 (CUDA), then
# `pip install -c constraints.txt -e '.[gpu,dev]'` (the GPU image has it, `make image-gpu`, without the dev
# extra). A machine without it, or without a GPU vLLM can use, gets one line saying which, and exit 3.
# The bench runs on $MODEL (default SmolLM2-135M-Instruct where medssr can build it offline, else the tiny test
# model, whose figure then only shows that the arm runs).
#
#   bench/gpu_check.sh
#   PYTHON=/opt/venv/bin/python OUT=/tmp/out MODEL=/models/smollm2 bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.medssr/gpu-check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1
started=$SECONDS

"$PYTHON" - <<'EOF' || exit 3
import sys

try:
    import pytest  # noqa: F401
    import torch
    import vllm
    from vllm.platforms import current_platform

    import medssr.serving  # noqa: F401  (the package-dir mapping: medssr is installed, not only on sys.path)
except ImportError as exc:
    sys.exit(f"gpu_check: {exc}: install torch 2.13.0, then `pip install -c constraints.txt -e '.[gpu,dev]'`")
if not torch.cuda.is_available() or current_platform.is_cpu():
    sys.exit(f"gpu_check: no CUDA GPU for vLLM here (torch sees CUDA: {torch.cuda.is_available()}; vLLM's build: "
             f"{current_platform.device_name})")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, vLLM {vllm.__version__}")
EOF
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

status=0
timeout 360 "$PYTHON" -m pytest -q -ra -m vllm -p no:cacheprovider --durations=20 --junitxml="$OUT/vllm-tests.xml" \
    tests/test_vllm_generation.py tests/test_vllm_grpo.py tests/test_vllm_openai_server.py tests/test_vllm_failures.py \
    > "$OUT/vllm-tests.log" 2>&1 || status=1
tail -n 30 "$OUT/vllm-tests.log"

if [ -z "${MODEL:-}" ]; then
    MODEL=$("$PYTHON" -c "from medssr.models import build_smollm2; print(build_smollm2())" 2>/dev/null) \
        || MODEL=$("$PYTHON" -c "from medssr.models import build_tiny_model; print(build_tiny_model('/tmp/medssr-gpu-check-tiny', attention_heads=2))")
fi
timeout 150 "$PYTHON" bench/generation.py --model "$MODEL" --vllm-dtypes bfloat16 --vllm-rounds 2 --record-dir "$OUT" \
    > "$OUT/generation-bench.log" 2>&1 || status=1
grep -E "^(model|machine|batched|loop|speed-up|bfloat16):" "$OUT/generation-bench.log"
echo "gpu_check: $((SECONDS - started)) s, $( [ $status = 0 ] && echo passed || echo FAILED: see $OUT)"
exit $status
