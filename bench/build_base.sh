#!/usr/bin/env bash
# The base models of the RLIR gain benchmark (README: "RLIR raises held-out action following"), about 60 CPU minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/rlir
B=runs/base
[ -f $B/data/dataset.json ] || $R -q collect --out $B/data --episodes 200 --seed 0
[ -f $B/idm/checkpoints/best/model.safetensors ] || $R -q idm train --data $B/data --out $B/idm --config configs/idm/tiny.yaml --set max_minutes=12 --set steps=4000 --set precision=bf16 --set threads=2
[ -f $B/judge/checkpoints/best/model.safetensors ] || $R -q idm train --data $B/data --out $B/judge --config configs/idm/judge_tiny.yaml --set max_minutes=5 --set steps=2500 --set precision=bf16 --set threads=2
[ -f $B/ar/tok/checkpoints/best/model.safetensors ] || $R -q tokenizer train --data $B/data --out $B/ar/tok --set max_minutes=6 --set threads=2 --set precision=bf16
[ -f $B/ar/wm/checkpoints/best/model.safetensors ] || $R -q wm train --paradigm ar --data $B/data --tokenizer $B/ar/tok/checkpoints/best --out $B/ar/wm --set max_minutes=35 --set steps=3000 --set eval_every=300 --set precision=bf16 --set threads=2
echo BASE DONE
