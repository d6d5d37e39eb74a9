#!/usr/bin/env bash
# Second GPU pass: retrain the SRDD transformer on the frozen VQVAE of run_pipeline.sh with short, fully annealed
# schedules (the first pass overfit after ~24 of 182 epochs) and keep the variant with the lowest held-out Markov CE.
#   PY=python3 NPZ=.devcarry/emoji32.npz VAE=.devcarry/vae.pth CLS=.devcarry/classifier.pt DEST=$OUT bash tools/train/run_var_sweep.sh
set -u
PY=${PY:-python3}; NPZ=${NPZ:-/work/scratch/emoji/emoji32.npz}; VAE=${VAE:-/work/scratch/emoji/vae.pth}
CLS=${CLS:-/work/scratch/emoji/classifier.pt}; DEST=${DEST:-/work/scratch/emoji}; DEVICE=${DEVICE:-cuda}; RUN=${RUN:-/tmp/sweep}
export PYTHONUNBUFFERED=1
mkdir -p $RUN/logs
T=tools/train
run() {  # name, args...
  n=$1; shift
  $PY $T/train_var.py --device $DEVICE --npz $NPZ --vae $VAE --keep-best --out $RUN/$n/var.pth --log $RUN/logs/train_var_$n.log "$@" 2>&1 \
    | grep -E "FINAL|keeping|wall|epochs set|held-out CE" | tail -8
}
run A --epochs 40 --drop-path 0.1 --weight-decay 0.05 --lr 2e-3
run B --epochs 60 --drop-path 0.2 --weight-decay 0.1 --lr 1e-3
run C --epochs 60 --drop-path 0.3 --weight-decay 0.2 --lr 2e-3
best=$(for n in A B C; do f=$RUN/logs/train_var_$n.log; v=$(grep -m1 "FINAL held-out CE \[markov\]" $f | sed 's/.*\[markov\] \([0-9.]*\).*/\1/'); [ -n "$v" ] && echo "$v $n"; done | sort -n | head -1 | cut -d' ' -f2)
echo "best variant: $best"
cp $RUN/$best/var.pth $DEST/var.pth
$PY $T/eval_tokens.py --device $DEVICE --npz $NPZ --vae $VAE --var $RUN/$best/var.pth --log $RUN/logs/eval_tokens.log
$PY $T/gen_samples.py --device $DEVICE --vae $VAE --var $RUN/$best/var.pth --n-per-class 100 --cfg 3 --top-k 40 \
  --out $DEST/gen_markov_cfg3_k40.npz --grid $DEST/grid_markov_cfg3_k40.png
$PY $T/evaluate.py $DEST/gen_markov_cfg3_k40.npz --npz $NPZ --classifier $CLS 2>&1 | tee $RUN/logs/evaluate_markov_cfg3_k40.log
(cd $RUN && tar cf $DEST/logs.tar logs)
