#!/usr/bin/env bash
# Full emoji32 training pipeline (VQVAE -> tokens -> SRDD VAR -> classifier -> samples -> evaluation).
# Used for the released weights on one CUDA GPU with time budgets; on CPU pass DEVICE=cpu and fixed epochs.
#   DEVICE=cuda PY=python3 NPZ=.devcarry/emoji32.npz RUN=/tmp/run DEST=$OUT bash tools/train/run_pipeline.sh
# Each stage copies its outputs to $DEST as soon as it finishes.
set -u
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
NPZ=${NPZ:-/work/scratch/emoji/emoji32.npz}
RUN=${RUN:-/tmp/emoji_run}
DEST=${DEST:-/work/scratch/emoji}
VQ_ARGS=${VQ_ARGS:---time-budget 190 --max-epochs 1500}
VAR_ARGS=${VAR_ARGS:---time-budget 190 --max-epochs 1500 --keep-best}
CLS_ARGS=${CLS_ARGS:---epochs 60}
export PYTHONUNBUFFERED=1
mkdir -p "$RUN/logs" "$DEST"
T=tools/train
log() { echo "== $(date +%T) $*"; }
log "device $DEVICE; $($PY -c 'import torch;print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
$PY $T/train_vqvae.py --device $DEVICE --npz $NPZ $VQ_ARGS --out $RUN/vae.pth --log $RUN/logs/train_vqvae.log \
  && cp $RUN/vae.pth $DEST/
log "vqvae done"
$PY $T/train_var.py --device $DEVICE --npz $NPZ $VAR_ARGS --vae $RUN/vae.pth --out $RUN/var.pth --log $RUN/logs/train_var.log \
  && cp $RUN/var.pth $DEST/
log "var done"
$PY $T/train_classifier.py --device $DEVICE --npz $NPZ $CLS_ARGS --out $RUN/classifier.pt --log $RUN/logs/train_classifier.log \
  && cp $RUN/classifier.pt $DEST/
log "classifier done"
$PY $T/eval_tokens.py --device $DEVICE --npz $NPZ --vae $RUN/vae.pth --var $RUN/var.pth --log $RUN/logs/eval_tokens.log
$PY $T/gen_samples.py --device $DEVICE --vae $RUN/vae.pth --var $RUN/var.pth --n-per-class 100 --cfg 3 --top-k 40 \
  --out $RUN/gen_markov_cfg3_k40.npz --grid $RUN/grid_markov_cfg3_k40.png && cp $RUN/gen_markov_cfg3_k40.npz $RUN/grid_markov_cfg3_k40.png $DEST/
$PY $T/evaluate.py $RUN/gen_markov_cfg3_k40.npz --npz $NPZ --classifier $RUN/classifier.pt 2>&1 | tee $RUN/logs/evaluate_markov_cfg3_k40.log
log "all done"
(cd $RUN && tar cf $DEST/logs.tar logs)
