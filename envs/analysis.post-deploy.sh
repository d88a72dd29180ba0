#!/usr/bin/env bash
# Run by Snakemake (--sdm conda) inside this environment once it is created: installs sftrl
# (envs/install-sftrl.sh, from the repository at SFTRL_ROOT, set by rules/common.smk).
set -euo pipefail
: "${SFTRL_ROOT:?SFTRL_ROOT is not set: create the environments through the Snakefile of sftrl}"
exec bash "$SFTRL_ROOT/envs/install-sftrl.sh" "$0"
