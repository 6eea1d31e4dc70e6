#!/usr/bin/env bash
# The GPU measurements, as one script with a time limit per stage (a lent GPU comes with minutes, not hours).
#
#   OUT=/tmp/gpu-out bash benchmarks/run_gpu.sh [packing] [seed] [speed]
#
# Stages (seed, packing and speed by default):
#   probe    one short MaPLe ImageNet run with its progress bar and Ray's resources; Python stacks at the limit.
#   seed     benchmarks/imagenet_b2n_seed.py: one MaPLe ImageNet base-to-novel seed through the real command,
#            shortened to 1 epoch (2,000 steps of batch 4) and 10 validation images per class (5,000 base + 5,000
#            novel); the full seed's time is projected from the measured rates in benchmarks/README.md.
#   packing  benchmarks/gpu_packing.py: 1, 2 and 4 MaPLe runs packed on the GPU by the Ray launcher.
#   speed    `mmprompt speed` of the frontier methods and MaPLe at the ViT-B/16 shape, ours vs the official
#            computation interleaved in one process (ratio = official / ours, median of the timed steps).
# Stages run in the order given. Each stage writes its log and JSON under $OUT; a stage that runs past its limit is stopped and the next runs.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(seed packing speed)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c \
  "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, platform.node(), \
  torch.cuda.get_device_name(0)); import os; print('cpus', os.cpu_count())"; date -u; } 2>&1 | tee "$OUT/machine.txt"

stage_probe() {  # where a run spends its time: one short MaPLe run with its progress bar, stacks dumped at the limit
  echo "== probe ==" | tee -a "$OUT/machine.txt"
  python3 -c "import ray; ray.init(address='local', include_dashboard=False, _node_ip_address='127.0.0.1'); \
print('ray resources', ray.cluster_resources()); ray.shutdown()" > "$OUT/probe_ray.log" 2>&1
  grep "ray resources" "$OUT/probe_ray.log" | tee -a "$OUT/machine.txt"
  python3 benchmarks/imagenet_b2n_seed.py --work /tmp/b2n --classes 1000 --val-per-class 10 --set optim.epochs=0 \
    > /dev/null 2>&1  # only makes the data and weights (a run of 0 epochs is refused)
  PYTHONFAULTHANDLER=1 timeout -s ABRT "${PROBE_LIMIT:-90}" python3 -m mmprompt.cli train --config maple_b2n \
    --dataset imagenet --data-root /tmp/b2n/data --clip /tmp/b2n/random-ViT-B-16.pt --clip-activation quick_gelu \
    --precision bf16 --num-workers 8 --output /tmp/probe-run --set optim.epochs=1 > "$OUT/probe.log" 2>&1
  echo "probe rc=$?" | tee -a "$OUT/machine.txt"
}

stage_seed() {
  echo "== seed ==" | tee -a "$OUT/machine.txt"
  timeout "${SEED_LIMIT:-200}" python3 benchmarks/imagenet_b2n_seed.py --work /tmp/b2n --precision bf16 \
    --num-workers 12 --val-per-class 10 --set optim.epochs=1 > "$OUT/seed.log" 2>&1
  echo "seed rc=$?" | tee -a "$OUT/machine.txt"
  cp /tmp/b2n/timing.json "$OUT/seed_timing.json" 2>/dev/null
}

stage_packing() {
  echo "== packing ==" | tee -a "$OUT/machine.txt"
  timeout "${PACKING_LIMIT:-200}" python3 benchmarks/gpu_packing.py --work /tmp/pack --concurrency 1 2 4 \
    > "$OUT/packing.log" 2>&1
  echo "packing rc=$?" | tee -a "$OUT/machine.txt"
  cp /tmp/pack/packing.json "$OUT/packing.json" 2>/dev/null
}

stage_speed() {
  echo "== speed ==" | tee -a "$OUT/machine.txt"
  for method in ${SPEED_METHODS:-promptkd mmrl clip_lora mmapp maple}; do
    timeout "${SPEED_LIMIT:-60}" python3 -m mmprompt.cli speed --method "$method" --arch ViT-B/16 --random-weights \
      --classes 100 --batch 4 --steps 10 --eval-images 200 --precision bf16 --no-fp32-baseline --output "$OUT/speed_$method.json" \
      > "$OUT/speed_$method.log" 2>&1
    echo "speed $method rc=$?" | tee -a "$OUT/machine.txt"
  done
}
for s in "${stages[@]}"; do "stage_$s"; done  # in the order given
date -u | tee -a "$OUT/machine.txt"
