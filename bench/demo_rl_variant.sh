#!/usr/bin/env bash
# one RL stage variant on a demo run's base: posttrain as the demo does, evaluate CLIPS clips (default 48),
# compare clip by clip to the base evaluated on the same clips (made once per CLIPS in DEMO_RUN/base_eval_CLIPS)
# usage: [CLIPS=96] bench/demo_rl_variant.sh DEMO_RUN NAME [--set k=v ...]   (the stage settings are rlir/demo.py's)
# NAME=stage with no --set evaluates the demo's own RL policy (DEMO_RUN/ar/rlir) instead of training one
set -eu
cd "$(dirname "$0")/.."
D=$1; NAME=$2; shift 2
CLIPS=${CLIPS:-48}
R=.venv/bin/rlir
O=$D/variants/$NAME
EV="--data $D/data --idm $D/idm/checkpoints/best --judge $D/judge/checkpoints/best --max-clips $CLIPS --seed 0"
B=$D/base_eval_$CLIPS
[ -f $B/metrics.json ] || $R -q evaluate $EV --out $B --world-model $D/ar/wm/checkpoints/best --label "ar base" --role base
mkdir -p $O
POLICY=$D/ar/rlir/checkpoints/policy
if [ "$NAME" != stage ]; then
  $R -q posttrain --world-model $D/ar/wm/checkpoints/best --idm $D/idm/checkpoints/best --judge $D/judge/checkpoints/best \
    --data $D/data --out $O/rlir --config configs/posttrain/ar_tiny.yaml --set seed=0 --set steps=300 --set max_minutes=6 \
    --set eval_every=10 --set probe_clips=8 --set media_every=30 "$@"
  POLICY=$O/rlir/checkpoints/policy
fi
$R -q evaluate $EV --out $O/eval_$CLIPS --world-model $POLICY --label "$NAME" --role posttrained
$R -q compare --base $B --treatment $O/eval_$CLIPS --out $O/compare_$CLIPS.json
