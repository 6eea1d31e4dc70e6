#!/usr/bin/env bash
# The CPU runs recorded in benchmarks/README.md (ViT-B/16, random weights, MaPLe, batch 4).
# Each configuration runs in its own child processes; run it on an otherwise idle machine
# (about 70 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
common=(--method maple --arch ViT-B/16 --random-weights --batch 4 --steps 5 --warmup 1
        --eval-images 300 --eval-batch 50 --memory-limit-gb 12)
run() {  # name, extra arguments...
    local name=$1; shift
    echo "== $name: mmprompt bench ${common[*]} $*" >&2
    mmprompt bench "${common[@]}" "$@" --output "$out/$name.json" | tee "$out/$name.txt"
}
run cpu_fp32 --classes 10,100,1000 --precision fp32
run cpu_bf16 --classes 100,1000 --precision bf16
