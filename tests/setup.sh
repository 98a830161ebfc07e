#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine with Python 3.11 (the
# README's test command runs it, then pytest). Needs root (or passwordless sudo) for the system packages: Slurm and munge for the Slurm tests,
# Chromium for the report page tests.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
$SUDO apt-get install -y -qq chromium >/dev/null
# torch first: the CPU build of 2.13.0 (DeepSpeed builds against whatever torch is installed)
pip install -q torch==2.13.0
pip install -q -e ".[train,test]"
