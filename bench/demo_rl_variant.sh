#!/usr/bin/env bash
# one RL stage variant on a demo run's base: posttrain as the demo does, evaluate 48 clips, compare to the base row
# usage: bench/demo_rl_variant.sh DEMO_RUN NAME [--set k=v ...]   (the stage settings are rlir/demo.py's for its default budget)
set -eu
cd "$(dirname "$0")/.."
D=$1; NAME=$2; shift 2
R=.venv/bin/rlir
O=$D/variants/$NAME
mkdir -p $O
$R -q posttrain --world-model $D/ar/wm/checkpoints/best --idm $D/idm/checkpoints/best --judge $D/judge/checkpoints/best --data $D/data --out $O/rlir --config configs/posttrain/ar_tiny.yaml --set seed=0 --set steps=20 --set max_minutes=5 --set eval_every=5 --set probe_clips=8 --set media_every=10 "$@"
$R -q evaluate --data $D/data --out $O/eval --idm $D/idm/checkpoints/best --judge $D/judge/checkpoints/best --world-model $O/rlir/checkpoints/policy --max-clips 48 --seed 0 --label "$NAME" --role posttrained
$R -q compare --base $D/ar/eval/base --treatment $O/eval --out $O/compare.json
