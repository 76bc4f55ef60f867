#!/usr/bin/env bash
# Runs `python -m diffusion_distillation.main "$@"` as one SLURM job: NODES
# nodes, one task per GPU, every task through launch/run.sh.
#
#   NODES=2 GPUS_PER_NODE=8 TIME=24:00:00 bash launch/slurm.sh \
#       --config=configs/cifar10_distill.py --workdir=/shared/runs/cifar10
#
# Outside a job it submits itself with `sbatch` (the job's log:
# slurm-<job id>.out in the current directory); inside the job it starts the
# tasks with `srun`. The tasks join one run by themselves (JAX reads SLURM's
# variables: no --coordinator_address), `train.batch_size` is the global
# batch over all GPUs, and an error on any task ends every task in one line.
# The checkout and the workdir must be on a filesystem every node sees;
# launch/run.sh creates the venv once (under a lock) for all of them.
#
# Environment (read when submitting):
#   NODES           nodes (default 1)
#   GPUS_PER_NODE   GPUs, and so tasks, per node (default 8)
#   TIME            time limit, sbatch's --time (default 24:00:00)
#   DD_SBATCH_ARGS  more sbatch arguments, e.g. "--partition=gpu --account=x"
#   DD_ACCELERATOR, DD_EXTRAS, DD_VENV: as for launch/run.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  NODES="${NODES:-1}"
  GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
  # shellcheck disable=SC2086  # DD_SBATCH_ARGS holds several arguments
  exec sbatch --job-name=diffusion_distillation --nodes="$NODES" \
    --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-node="$GPUS_PER_NODE" \
    --time="${TIME:-24:00:00}" ${DD_SBATCH_ARGS:-} \
    "$REPO/launch/slurm.sh" "$@"
fi

# Inside the job. --kill-on-bad-exit: SLURM too ends the other tasks when one
# fails (the program itself already does, with the failing task's message).
exec srun --kill-on-bad-exit=1 bash "$REPO/launch/run.sh" "$@"
