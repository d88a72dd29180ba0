#!/usr/bin/env bash
# Shared by envs/<env>.post-deploy.sh, which Snakemake (--sdm conda) runs inside a new environment,
# once, after it is created: install this repository's sftrl package, editable and without
# dependencies (the environment file lists them). SFTRL_ROOT is the repository, set by
# rules/common.smk in the Snakemake process. $1 is the post-deploy script as Snakemake ran it.
set -euo pipefail
: "${SFTRL_ROOT:?SFTRL_ROOT is not set: create the environments through the Snakefile of sftrl}"
# An environment made from envs/<env>.linux-64.pin.txt (which --sdm conda prefers; Snakemake
# keeps a copy of it beside the post-deploy script, as <env prefix>.pin.txt) has the conda packages only:
# its pip packages are the file's "# pip:" lines, exact versions.
pins="${1%.post-deploy.sh}.pin.txt"
if [[ -f $pins ]]; then
    sed -n 's/^# pip: //p' "$pins" >"$pins.pip"
    python -m pip install --requirement "$pins.pip"
fi
python -m pip install --no-deps --no-build-isolation --editable "$SFTRL_ROOT"
