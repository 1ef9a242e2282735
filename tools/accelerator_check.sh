#!/usr/bin/env bash
# The paper's step on this machine's accelerator (issue #41, item 6).
#
# flags/v2.cfg (ResNet-161, 36 patches of 80x80 per image) for 20 steps in
# mixed bfloat16 on the first device, at the largest per-replica batch
# that fits: the start-up estimate's batch first, halved until a step
# runs. Prints images/s, MFU against the bf16 matmul peak measured in the
# same process, and the device's peak memory (TF's allocator), and keeps
# the records in OUT_DIR.
#
#   tools/accelerator_check.sh [OUT_DIR]      REMAT=blocks MICROBATCHES=1
set -uo pipefail
out=${1:-accelerator_check}
remat=${REMAT:-blocks}
microbatches=${MICROBATCHES:-1}
mkdir -p "$out"
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true) \
    | tee "$out/device.txt"
settings=(--remat="$remat" --microbatches="$microbatches")
batch=$(python tools/largest_batch.py --flagfile=flags/v2.cfg "${settings[@]}")
echo "estimate: batch $batch per device with ${settings[*]}"
while [ "${batch:-0}" -ge "$microbatches" ]; do
    record="$out/v2_b$batch.json"
    python -m cpc_tf.benchmark --configs=v2 --precisions=mixed_bfloat16 \
        --batch_size="$batch" --steps=20 --warmup_steps=3 \
        --set=v2:--remat="$remat" --set=v2:--microbatches="$microbatches" \
        --output="$record" 2>&1 | tee "$out/v2_b$batch.log"
    if python - "$record" <<'PY'
import json, sys
records = json.load(open(sys.argv[1]))["records"]
ok = [r for r in records if "images_per_s" in r and not r.get("error")]
for r in ok:
    print(f"batch {r['batch_size']}: {r['images_per_s']:.1f} images/s, "
          f"MFU {r['mfu']:.1%} of the measured bf16 peak, device peak "
          f"{r.get('device_peak_memory_mb') or 0:.0f} MiB")
sys.exit(0 if ok else 1)
PY
    then
        exit 0
    fi
    batch=$((batch / 2))
done
echo "no batch ran; see $out/*.log"
exit 1
