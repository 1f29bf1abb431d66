#!/usr/bin/env bash
# armm on one CUDA GPU, as one prepared run. Sections (all of them, in this order, when none is named):
#   tests   pytest -m gpu: cached decoding in float32/bfloat16, the compiled backend's CUDA graphs, bf16-mixed
#           training of the text recipe, a GPU checkpoint resumed on the CPU (tests/gpu/)
#   decode  a ~1B Llama (TinyLlama's shape, random weights) in bfloat16, batch 1 and 8: armm generate(compile=True)
#           against transformers generate with its static cache (which it compiles), and against the bandwidth floor
#   train   a 124M GPT-2 in bf16 autocast, batch 32 x 1024: armm's Lightning loop against a plain PyTorch loop,
#           with torch.compile off, then on
# Run from the repository root in an environment with armm[dev] installed:
#   bash bench/gpu.sh 2>&1 | tee gpu.log            # about 8 minutes on an H200
#   bash bench/gpu.sh decode train                  # only those sections
# Record the printed tables in docs/performance.md with the date and the GPU.
set -euo pipefail
PYTHON=${PYTHON:-python}
export PYTHONUNBUFFERED=1
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(tests decode train)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
for section in "${sections[@]}"; do
    case "$section" in
    tests)
        echo "== tests: pytest -m gpu =="
        "$PYTHON" -m pytest -m gpu tests/gpu -q -p no:cacheprovider ;;
    decode)
        echo "== decode: armm vs transformers, ~1B Llama, bfloat16 =="
        "$PYTHON" bench/generate.py --device cuda --dtype bfloat16 --models llama-1b --batch-sizes 1 8 \
            --repeats 3 --late 0 ;;
    train)
        for compiled in "" "--compile"; do
            echo "== training: armm Lightning loop vs plain PyTorch, 124M GPT-2, bf16 autocast ${compiled} =="
            "$PYTHON" bench/train.py --device cuda --preset gpt2-124m --precisions bf16 --batch-size 32 \
                --seq-len 1024 --rounds 3 --warmup 2 --steps 10 $compiled
        done ;;
    *)
        echo "unknown section $section: choose from tests, decode, train" >&2; exit 2 ;;
    esac
done
