#!/bin/bash
# dsn cv as a SLURM job array: array task K trains fold K (`dsn cv --fold K`) into the one cv run of the config;
# a last job, started once every task has ended, pools them (`dsn cv --collect`). Submit both at once:
#
#   jid=$(sbatch --parsable --array=0-19 conf/slurm/cv-array.sh conf/paper.yaml conf/paper-sleepedf20.yaml conf/gpu.yaml)
#   sbatch --dependency=afterany:$jid --gres=gpu:0 --export=ALL,DSN_CV_COLLECT=1 \
#       conf/slurm/cv-array.sh conf/paper.yaml conf/paper-sleepedf20.yaml conf/gpu.yaml
#
# The arguments are config files (stacked in that order); DSN_CV_ARGS holds further dsn cv options, the same
# for every task and for the collect job (e.g. DSN_CV_ARGS="--folds 20 --out results/paper-sedf20").
# --array must cover 0..folds-1 (the folds: --folds, else data.n_folds of the configs).
# Every task must see the same tracking store and tracking home: on a shared file system keep the default
# local store (the home's lock files keep tasks that start at once from creating two cv runs), or point
# MLFLOW_TRACKING_URI at a tracking server. A task that ran out of time: resubmit it (sbatch --array=K ...);
# it resumes from the fold's last state. The collect job exits 1 and names the missing folds while any is missing.
#
#SBATCH --job-name=dsn-cv
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=dsn-cv-%A_%a.log
set -euo pipefail

configs=()
for c in "$@"; do
    configs+=(--config "$c")
done
read -r -a extra <<< "${DSN_CV_ARGS:-}"
DSN=${DSN:-dsn}   # e.g. DSN="/path/to/.venv/bin/python -m dsn"

if [ "${DSN_CV_COLLECT:-0}" = "1" ]; then
    exec $DSN cv "${configs[@]}" "${extra[@]}" --collect true
fi
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-<folds-1> (or set DSN_CV_COLLECT=1 to pool)}"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
exec $DSN cv "${configs[@]}" "${extra[@]}" --fold "$SLURM_ARRAY_TASK_ID" \
    --pretrain.trainer.enable_progress_bar false --finetune.trainer.enable_progress_bar false
