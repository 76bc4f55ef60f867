#!/usr/bin/env bash
# Cloud TPU VM workflow: create a TPU VM (single host or a multi-host slice),
# copy this repository to every worker, start training on every worker, follow
# the log, delete the VM.
#
#   launch/tpu_vm.sh [OPTIONS] SUBCOMMAND [--] [ARGS for diffusion_distillation.main]
#
# Subcommands:
#   create   gcloud compute tpus tpu-vm create (skipped if the VM exists)
#   copy     tar the repository (without .venv*, .git, workdirs, caches), scp it
#            to all workers and unpack it into ~/$REMOTE_DIR
#   run      on all workers, in the background:
#              cd ~/$REMOTE_DIR && DD_ACCELERATOR=tpu launch/run.sh \
#                  --config=$CONFIG --workdir=$WORKDIR ARGS > ~/dd.log
#   logs     follow ~/dd.log of worker $LOG_WORKER (default 0)
#   delete   delete the TPU VM
#   all      create, copy, run, logs
#
# Settings (environment variable, or the option given before SUBCOMMAND):
#   TPU_NAME          --name=             TPU VM name                (required)
#   ZONE              --zone=             e.g. us-central2-b         (required)
#   ACCELERATOR_TYPE  --accelerator-type= e.g. v4-32       (required by create)
#   TPU_VERSION       --version=          runtime; default by accelerator type:
#                                         v5litepod-* v2-alpha-tpuv5-lite,
#                                         v5p-* v2-alpha-tpuv5,
#                                         v6e-* v2-alpha-tpuv6e,
#                                         others tpu-ubuntu2204-base
#   PROJECT           --project=          GCP project (optional)
#   WORKDIR           --workdir=          e.g. gs://bucket/run  (required by run)
#   CONFIG            --config=           e.g. configs/cifar10_distill.py
#                                                           (required by run)
#   REMOTE_DIR        --remote-dir=       code directory under ~ on the workers
#                                         (default diffusion_distillation)
#   CREATE_FLAGS                          extra flags for create, e.g. "--spot"
#   LOG_WORKER                            worker whose log `logs` follows (0)
#
# Multi-host initialisation (jax.distributed) happens inside the Python
# program; every worker just runs the same command.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="tpu_vm.sh"

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
TPU_VERSION="${TPU_VERSION:-}"
PROJECT="${PROJECT:-}"
WORKDIR="${WORKDIR:-}"
CONFIG="${CONFIG:-}"
REMOTE_DIR="${REMOTE_DIR:-diffusion_distillation}"
CREATE_FLAGS="${CREATE_FLAGS:-}"
LOG_WORKER="${LOG_WORKER:-0}"
REMOTE_LOG='~/dd.log'
REMOTE_TARBALL='~/dd_code.tar.gz'

say() { echo "[$PROG] $*" >&2; }
die() { echo "[$PROG] error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# --- arguments ---------------------------------------------------------------
CMD=""
while (($#)); do
  case "$1" in
    --name=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator-type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --version=*) TPU_VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --remote-dir=*) REMOTE_DIR="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    create|copy|run|logs|delete|all) CMD="$1"; shift; break ;;
    *) die "unknown option or subcommand '$1' (options go before the" \
           "subcommand; see --help)" ;;
  esac
  shift
done
[[ -n "$CMD" ]] || { usage >&2; die "no subcommand given"; }
if [[ "${1:-}" == "--" ]]; then shift; fi
EXTRA_ARGS=("$@")
if (($# > 0)) && [[ "$CMD" != run && "$CMD" != all ]]; then
  die "'$CMD' takes no arguments (got: $*); arguments are passed to main by" \
      "'run' and 'all'"
fi

if [[ -z "$TPU_VERSION" ]]; then
  case "$ACCELERATOR_TYPE" in
    v5litepod-*|v5e-*) TPU_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) TPU_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) TPU_VERSION=v2-alpha-tpuv6e ;;
    *) TPU_VERSION=tpu-ubuntu2204-base ;;
  esac
fi

flag_of() {
  case "$1" in
    TPU_NAME) echo --name ;;
    ZONE) echo --zone ;;
    ACCELERATOR_TYPE) echo --accelerator-type ;;
    CONFIG) echo --config ;;
    WORKDIR) echo --workdir ;;
  esac
}

require() {
  local missing="" var
  for var in "$@"; do
    if [[ -z "${!var}" ]]; then
      missing="${missing:+$missing, }$var (or $(flag_of "$var")=...)"
    fi
  done
  if [[ -n "$missing" ]]; then
    die "missing required setting(s) for '$CMD': $missing"
  fi
}

case "$CMD" in
  create) require TPU_NAME ZONE ACCELERATOR_TYPE ;;
  run) require TPU_NAME ZONE CONFIG WORKDIR ;;
  all) require TPU_NAME ZONE ACCELERATOR_TYPE CONFIG WORKDIR ;;
  *) require TPU_NAME ZONE ;;
esac

# --- gcloud ------------------------------------------------------------------
# tpu_vm VERB POSITIONAL... -- FLAGS... runs
#   gcloud compute tpus tpu-vm VERB POSITIONAL... --zone=Z [--project=P] FLAGS...
tpu_vm() {
  local cmd=(gcloud compute tpus tpu-vm)
  while [[ "$1" != -- ]]; do cmd+=("$1"); shift; done
  shift
  cmd+=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then cmd+=(--project="$PROJECT"); fi
  "${cmd[@]}" "$@"
}

remote_dir() { echo "~/$(printf '%q' "$REMOTE_DIR")"; }

do_create() {
  if tpu_vm describe "$TPU_NAME" -- --format='value(state)' >/dev/null 2>&1; then
    say "create: $TPU_NAME already exists, skipping"
    return
  fi
  say "create: $TPU_NAME ($ACCELERATOR_TYPE, $TPU_VERSION) in $ZONE"
  local extra=()
  if [[ -n "$CREATE_FLAGS" ]]; then read -r -a extra <<< "$CREATE_FLAGS"; fi
  tpu_vm create "$TPU_NAME" -- --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$TPU_VERSION" ${extra[@]+"${extra[@]}"}
}

do_copy() {
  local tmp
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  say "copy: $REPO -> $TPU_NAME:$(remote_dir) on all workers"
  COPYFILE_DISABLE=1 tar -czf "$tmp/dd_code.tar.gz" -C "$REPO" \
      --exclude='.venv*' --exclude=.git --exclude=workdirs \
      --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache \
      .
  tpu_vm scp "$tmp/dd_code.tar.gz" "$TPU_NAME:$REMOTE_TARBALL" -- --worker=all
  tpu_vm ssh "$TPU_NAME" -- --worker=all --command="mkdir -p $(remote_dir) &&\
 tar -xzf $REMOTE_TARBALL -C $(remote_dir) && rm -f $REMOTE_TARBALL"
  rm -rf "$tmp"
  trap - EXIT
}

do_run() {
  case "$WORKDIR" in
    gs://*) ;;
    *) say "warning: WORKDIR '$WORKDIR' is not a gs:// path; each worker" \
           "will write to its own disk" ;;
  esac
  local args=(--config="$CONFIG" --workdir="$WORKDIR")
  args+=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
  local quoted
  quoted="$(printf ' %q' "${args[@]}")"
  say "run: launch/run.sh$quoted on all workers (log: $REMOTE_LOG)"
  tpu_vm ssh "$TPU_NAME" -- --worker=all --command="cd $(remote_dir) &&\
 DD_ACCELERATOR=tpu nohup bash launch/run.sh$quoted\
 > $REMOTE_LOG 2>&1 < /dev/null &"
}

do_logs() {
  say "logs: worker $LOG_WORKER, $REMOTE_LOG (Ctrl-C to stop following)"
  tpu_vm ssh "$TPU_NAME" -- --worker="$LOG_WORKER" \
      --command="tail -n 200 -F $REMOTE_LOG"
}

do_delete() {
  say "delete: $TPU_NAME"
  tpu_vm delete "$TPU_NAME" -- --quiet
}

case "$CMD" in
  create) do_create ;;
  copy) do_copy ;;
  run) do_run ;;
  logs) do_logs ;;
  delete) do_delete ;;
  all) do_create; do_copy; do_run; do_logs ;;
esac
