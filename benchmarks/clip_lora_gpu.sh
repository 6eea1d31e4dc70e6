#!/usr/bin/env bash
# The CLIP-LoRA speed figures on one GPU (ViT-B/16, batch 32, DTD's 47 classes): fp16 autocast (the official
# precision) and fp32, ours on its default text path and on the full 77-token context. Writes $OUT/*.json.
set -euo pipefail
OUT=${OUT:-benchmarks/results/successors}
export PYTHONPATH=$PWD/src
for prec in fp16 fp32; do
  python benchmarks/clip_lora_speed.py --arch ViT-B/16 --batch 32 --classes 47 --device cuda --precision $prec \
    --reps 9 --warmup 3 --json "$OUT/gpu_h200_clip_lora_${prec}.json"
  python benchmarks/clip_lora_speed.py --arch ViT-B/16 --batch 32 --classes 47 --device cuda --precision $prec \
    --reps 9 --warmup 3 --full-text --json "$OUT/gpu_h200_clip_lora_${prec}_fulltext.json"
done
