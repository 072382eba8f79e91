#!/usr/bin/env bash
# Fill (or update) the lambdatorch tree on EFS from the artifacts the README uploads:
#
#   ARTIFACTS/wheels/lambdatorch-*.whl   exactly one wheel, built by `make wheel`
#   ARTIFACTS/models/<name>/             model directories written by `lambdatorch add-model`
#
# into the tree the functions read (design: "The EFS tree"):
#
#   ROOT/python/   pip install --target: lambdatorch and numpy, then torch (CPU build) for libtorch
#   ROOT/models/   one directory per model, never changed once written
#
# then checks the tree with `lambdatorch doctor`, whose exit status is the script's, and records
# the pages of libtorch a cold start touches, for the functions' cold starts to prefetch.
#
# On the loader instance the README runs it as root through `aws ssm send-command`, with
# LT_FILE_SYSTEM_ID and LT_ACCESS_POINT_ID set so that it mounts the file system first. The
# same script runs in tests/python/test_deploy.py against a local directory, with pip pointed
# at local wheels through pip's own environment variables (PIP_NO_INDEX, PIP_FIND_LINKS, ...).
#
# Environment:
#   LT_ARTIFACTS        s3://BUCKET/lambdatorch or a local directory (required)
#   LT_ROOT             the tree (default /mnt/efs)
#   LT_FILE_SYSTEM_ID   with LT_ACCESS_POINT_ID: mount the file system at LT_ROOT through the
#   LT_ACCESS_POINT_ID  access point, with TLS and IAM authorization (amazon-efs-utils)
#   LT_PYTHON           interpreter that runs pip and doctor (default python3.12, the Python
#                       function's runtime: numpy's wheels and the .pyc files pip writes are
#                       per Python version, and Lambda cannot write .pyc files to a read-only mount)
#   LT_TORCH_VERSION    default 2.13.0, the libtorch lambdatorch is built against
#   LT_TORCH_INDEX      default https://download.pytorch.org/whl/cpu (the CPU-only build)
set -euo pipefail

: "${LT_ARTIFACTS:?set LT_ARTIFACTS to s3://BUCKET/lambdatorch or a local directory}"
ROOT=${LT_ROOT:-/mnt/efs}
PYTHON=${LT_PYTHON:-python3.12}
TORCH_VERSION=${LT_TORCH_VERSION:-2.13.0}
TORCH_INDEX=${LT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
MODEL_NAME='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'

step() { printf '== %s\n' "$*"; }
fail() {
  printf 'fill_efs: %s\n' "$*" >&2
  exit 1
}
# Every file's path and sha256, to compare two model directories (coreutils and findutils only).
digest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum); }
pip_install() {
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input \
    --progress-bar off --root-user-action=ignore --target "$ROOT/python" "$@"
}

# --- mount -----------------------------------------------------------------------------------
if [[ -n ${LT_FILE_SYSTEM_ID:-} ]]; then
  [[ -n ${LT_ACCESS_POINT_ID:-} ]] || fail "LT_FILE_SYSTEM_ID needs LT_ACCESS_POINT_ID"
  command -v mount.efs >/dev/null || dnf install -y -q amazon-efs-utils
  mkdir -p "$ROOT"
  if ! mountpoint -q "$ROOT"; then
    step "mount $LT_FILE_SYSTEM_ID through $LT_ACCESS_POINT_ID at $ROOT (tls, iam)"
    mount -t efs -o "tls,iam,accesspoint=$LT_ACCESS_POINT_ID" "$LT_FILE_SYSTEM_ID:/" "$ROOT"
  fi
fi
[[ -d $ROOT ]] || fail "$ROOT is not a directory"

if ! command -v "$PYTHON" >/dev/null; then
  if [[ $PYTHON != python3.12 ]] || ! command -v dnf >/dev/null; then
    fail "$PYTHON not found"
  fi
  dnf install -y -q python3.12 python3.12-pip
fi

# --- artifacts -------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step "artifacts from $LT_ARTIFACTS"
if [[ $LT_ARTIFACTS == s3://* ]]; then
  aws s3 cp --recursive --only-show-errors "${LT_ARTIFACTS%/}/" "$work/"
else
  [[ -d $LT_ARTIFACTS ]] || fail "$LT_ARTIFACTS is neither s3://... nor a directory"
  cp -R "$LT_ARTIFACTS/." "$work/"
fi

# --- what changes ----------------------------------------------------------------------------
# Everything is checked before anything is written: one wheel, valid model names, and no model
# that would replace a different one. A model directory is never changed in place, because an
# execution environment may be reading it: a new model, or a new revision of one, gets a new
# name (README: "Updating").
shopt -s nullglob
wheels=("$work"/wheels/lambdatorch-*.whl)
((${#wheels[@]} == 1)) || fail "expected one wheels/lambdatorch-*.whl in $LT_ARTIFACTS, found ${#wheels[@]}"
new_models=()
for source in "$work"/models/*/; do
  name=$(basename "$source")
  [[ $name =~ $MODEL_NAME ]] || fail "models/$name: not a valid model name ($MODEL_NAME)"
  target="$ROOT/models/$name"
  if [[ ! -e $target ]]; then
    new_models+=("$name")
  elif [[ $(digest "$source") == "$(digest "$target")" ]]; then
    step "model $name unchanged"
  else
    fail "models/$name differs from $target, which is never overwritten: upload it under a new name"
  fi
done

# --- python/ ---------------------------------------------------------------------------------
mkdir -p "$ROOT/python" "$ROOT/models"
step "install $(basename "${wheels[0]}") into $ROOT/python"
pip_install --upgrade "${wheels[0]}"

# torch is only there for torch/lib (libtorch_cpu.so, libc10.so); nothing imports it, so none of
# its dependencies are installed. Skipped when the tree already has this version: a new wheel or
# a new model does not download the CPU build again.
installed=""
if [[ -f $ROOT/python/torch/version.py ]]; then
  installed=$(sed -n "s/^__version__ = '\([^'+]*\).*/\1/p" "$ROOT/python/torch/version.py")
fi
if [[ $installed == "$TORCH_VERSION" ]]; then
  step "torch $installed already in $ROOT/python"
else
  step "install torch==$TORCH_VERSION (${installed:-none there}) from $TORCH_INDEX"
  pip_install --upgrade --no-deps --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
fi

# --- models/ ---------------------------------------------------------------------------------
# Each new model is copied outside models/ and renamed into it, so neither a function nor doctor
# sees half a model.
for name in "${new_models[@]}"; do
  step "add model $name"
  partial="$ROOT/.partial-model-$name"
  rm -rf "$partial"
  cp -R "$work/models/$name" "$partial"
  mv "$partial" "$ROOT/models/$name"
done

# --- check -----------------------------------------------------------------------------------
# --record-pages: then the page record beside libtorch, which makes the functions' cold starts
# prefetch what they will read (README, "Command line").
step "lambdatorch doctor --root $ROOT --record-pages"
PYTHONPATH="$ROOT/python" "$PYTHON" -m lambdatorch doctor --root "$ROOT" --record-pages
