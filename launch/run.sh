#!/usr/bin/env bash
# Sets up a virtualenv with the right JAX build, then runs
# `python -m diffusion_distillation.main "$@"`.
#
# Safe to run again and again, on every host of a multi-host TPU slice and in
# every task of a SLURM job: the venv is created once, under a lock (flock) so
# that processes starting together on a shared filesystem never install into
# it at once, and packages are (re)installed only when setup.cfg /
# pyproject.toml or the accelerator changed since the last install.
#
#   launch/run.sh --config=configs/cifar10_distill.py --workdir=gs://b/run
#
# Environment:
#   DD_ACCELERATOR  tpu | cuda | cuda12 | cuda13 | cpu. Default: detected --
#                   cuda if `nvidia-smi` runs; else tpu if /dev/accel* or
#                   /dev/vfio/<n> exists or TPU_NAME / TPU_ACCELERATOR_TYPE /
#                   TPU_WORKER_HOSTNAMES is set; else cpu. Installs ".[tpu]"
#                   (jax[tpu]), ".[cuda]" (jax[cuda12]), ".[cuda13]"
#                   (jax[cuda13]) or "." (CPU jax). Exported, with
#                   JAX_PLATFORMS to match (unless set): the program then stops
#                   in one line if JAX cannot use that hardware instead of
#                   training on the CPU.
#   DD_EXTRAS       more extras, comma-separated. Added by themselves: "tfds"
#                   (TensorFlow Datasets) for any --config other than
#                   configs/digits*.py, "gcs" (gcsfs) when an argument holds a
#                   gs:// path.
#   DD_VENV         virtualenv directory (default: <repo>/.venv).
#   DD_PYTHON       interpreter used to create the venv (default: python3).
#   DD_DRY_RUN=1    print the commands instead of running them (nothing is
#                   created or installed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DD_VENV:-$REPO/.venv}"
BASE_PYTHON="${DD_PYTHON:-python3}"
DRY_RUN="${DD_DRY_RUN:-0}"
# Where device nodes are looked up; only overridden by the tests.
DEVFS="${DD_DEVFS:-/dev}"
STAMP="$VENV/.dd_install_stamp"

say() { echo "[run.sh] $*" >&2; }
die() { echo "[run.sh] error: $*" >&2; exit 1; }

is_dry_run() {
  case "$DRY_RUN" in 1|true|True|TRUE|yes) return 0 ;; *) return 1 ;; esac
}

# Runs a command, or prints it (shell-quoted, prefixed by '+') in a dry run.
run() {
  if is_dry_run; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# CUDA first: a GPU host may have /dev/vfio/<n> devices of its own.
detect_accelerator() {
  local dev
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo cuda; return
  fi
  for dev in "$DEVFS"/accel* "$DEVFS"/vfio/[0-9]*; do
    if [[ -e "$dev" ]]; then echo tpu; return; fi
  done
  if [[ -n "${TPU_NAME:-}${TPU_ACCELERATOR_TYPE:-}${TPU_WORKER_HOSTNAMES:-}" ]]
  then
    echo tpu; return
  fi
  echo cpu
}

hash_stdin() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 | cut -d' ' -f1
  else
    cksum | cut -d' ' -f1
  fi
}

# Identifies what an install depends on: the accelerator, the extras and the
# package metadata files.
install_fingerprint() {
  {
    echo "accelerator=$ACCELERATOR extras=$EXTRAS"
    local f
    for f in setup.cfg pyproject.toml setup.py; do
      if [[ -f "$REPO/$f" ]]; then
        echo "== $f"
        cat "$REPO/$f"
      fi
    done
  } | hash_stdin
}

# --- accelerator -------------------------------------------------------------
if [[ -n "${DD_ACCELERATOR:-}" ]]; then
  ACCELERATOR="$DD_ACCELERATOR"
  source_note="from DD_ACCELERATOR"
else
  ACCELERATOR="$(detect_accelerator)"
  source_note="detected"
fi
case "$ACCELERATOR" in
  tpu|cuda|cuda13) EXTRAS="$ACCELERATOR"; PLATFORM="${ACCELERATOR%13}" ;;
  cuda12) EXTRAS="cuda"; PLATFORM="cuda" ;;
  cpu) EXTRAS=""; PLATFORM="cpu" ;;
  *) die "DD_ACCELERATOR must be tpu, cuda, cuda12, cuda13 or cpu (got" \
         "'$ACCELERATOR')" ;;
esac
say "accelerator: $ACCELERATOR ($source_note)"
# The program checks that JAX really uses it (no silent CPU fallback).
export DD_ACCELERATOR="$ACCELERATOR"
export JAX_PLATFORMS="${JAX_PLATFORMS:-$PLATFORM}"

# --- extras the command needs --------------------------------------------------
add_extra() {
  case ",$EXTRAS," in *",$1,"*) ;; *) EXTRAS="${EXTRAS:+$EXTRAS,}$1" ;; esac
}
for arg in "$@"; do
  case "$arg" in
    --config=*digits*) ;;
    --config=*) add_extra tfds ;;
  esac
  case "$arg" in *gs://*) add_extra gcs ;; esac
done
REQUESTED="${DD_EXTRAS:-}"
for extra in ${REQUESTED//,/ }; do
  add_extra "$extra"
done
SPEC="$REPO${EXTRAS:+[$EXTRAS]}"

# --- virtualenv --------------------------------------------------------------
# One installer at a time: every task of a multi-node job runs this script,
# and on a shared filesystem they all see the same venv.
if ! is_dry_run && command -v flock >/dev/null 2>&1; then
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
fi
PY="$VENV/bin/python"
if [[ -x "$PY" && -e "$VENV/bin/pip" ]]; then
  say "venv: $VENV (exists)"
else
  say "venv: creating $VENV"
  if is_dry_run; then
    run "$BASE_PYTHON" -m venv "$VENV"
  elif ! "$BASE_PYTHON" -m venv "$VENV" >/dev/null; then
    # Ubuntu ships the venv module separately (e.g. on TPU VM images).
    if command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      say "venv: installing python3-venv with apt-get"
      sudo -n apt-get install -y -qq python3-venv >/dev/null
      "$BASE_PYTHON" -m venv "$VENV" >/dev/null
    else
      die "'$BASE_PYTHON -m venv' failed; install the venv module" \
          "(e.g. 'sudo apt-get install python3-venv') or set DD_PYTHON"
    fi
  fi
fi

# --- packages ----------------------------------------------------------------
# The stamp holds one line per install (accelerator + extras) done since the
# package metadata last changed.
FINGERPRINT="$(install_fingerprint)"
if [[ -f "$STAMP" ]] && grep -qxF "$FINGERPRINT" "$STAMP"; then
  say "install: up to date ($ACCELERATOR)"
else
  say "install: pip install -e $SPEC"
  # The build backend's warnings (setuptools' editable-install banner) are
  # not for the users of this script.
  PYTHONWARNINGS=ignore run "$PY" -m pip install --quiet \
    --disable-pip-version-check --upgrade pip
  PYTHONWARNINGS=ignore run "$PY" -m pip install --quiet \
    --disable-pip-version-check -e "$SPEC"
  if is_dry_run; then
    echo "+ write $STAMP $FINGERPRINT"
  else
    echo "$FINGERPRINT" >> "$STAMP"
  fi
fi

# --- launch ------------------------------------------------------------------
exec 9>&-  # the install lock
say "launch: python -m diffusion_distillation.main $*"
if is_dry_run; then
  run "$PY" -m diffusion_distillation.main "$@"
  exit 0
fi
exec "$PY" -m diffusion_distillation.main "$@"
