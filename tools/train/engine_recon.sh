#!/usr/bin/env bash
# Mean per-image PSNR of `srdd reconstruct` (encode -> tokens -> decode, 8-bit in and out) over a
# directory of held-out PNGs, for the given model (default: the built-in int8 model).
#   tools/train/engine_recon.sh /work/scratch/emoji/heldout [MODEL.srdd]
# (export the held-out PNGs with: tools/train/tradeoff_report.py --export-heldout DIR)
set -euo pipefail
dir=$1
model=${2:-}
bin=${SRDD:-target/release/srdd}
tmp=$(mktemp -d)
n=0
sum=0
for f in "$dir"/*.png; do
  if [ -n "$model" ]; then
    out=$("$bin" reconstruct "$f" --model "$model" -o "$tmp/r.png")
  else
    out=$("$bin" reconstruct "$f" -o "$tmp/r.png")
  fi
  db=$(echo "$out" | sed -n 's/.*PSNR \([0-9.]*\) dB.*/\1/p')
  sum=$(echo "$sum + $db" | bc -l)
  n=$((n + 1))
done
rm -rf "$tmp"
printf 'mean reconstruction PSNR over %d images: %.2f dB (%s)\n' "$n" "$(echo "$sum / $n" | bc -l)" "${model:-built-in int8}"
