#!/usr/bin/env bash
# The benchmarks on one CUDA GPU, as one prepared run: decode against transformers and the HBM bandwidth floor
# (bfloat16; the GPT-2 and Llama configs of bench/generate.py, and a ~1B Llama at batch 1), then training
# throughput and MFU of a 124M GPT-2 in bf16 autocast, armm's Lightning loop against a plain PyTorch loop.
# Run from the repository root in an environment with armm[dev] installed:
#   bash bench/gpu.sh 2>&1 | tee gpu.log        # about 10 minutes on an H100/H200
# Record the printed tables in docs/performance.md with the date and the GPU.
set -euo pipefail
PYTHON=${PYTHON:-python}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
echo "== decode: armm vs transformers, bfloat16 =="
"$PYTHON" bench/generate.py --device cuda --dtype bfloat16 --models gpt2 llama llama-1b --batch-sizes 1 8 \
    --repeats 3 --late 1000 --compile
echo "== training: armm Lightning loop vs plain PyTorch, 124M GPT-2, bf16 autocast =="
"$PYTHON" bench/train.py --device cuda --preset gpt2-124m --precisions bf16
