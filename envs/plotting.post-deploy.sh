#!/usr/bin/env bash
# Run by Snakemake (--sdm conda) inside the new environment, once, after it is created: install
# this repository's sftrl package, editable and without dependencies (the environment file lists
# them). SFTRL_ROOT is the repository, set by rules/common.smk in the Snakemake process.
set -euo pipefail
: "${SFTRL_ROOT:?SFTRL_ROOT is not set: create the environments through the Snakefile of sftrl}"
python -m pip install --no-deps --no-build-isolation --editable "$SFTRL_ROOT"
