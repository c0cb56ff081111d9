#!/usr/bin/env bash
# Before installing the virtual environment (about 3.4 GB once installed, plus pip's temporary files): say how much
# disk is free where it goes, and refuse clearly when it cannot fit, instead of failing half-way in pip.
# usage: check-disk.sh DIR NEED_GB
set -euo pipefail
dir="${1:-.}"
need_gb="${2:-5}"
free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
free_gb=$((free_kb / 1024 / 1024))
echo "disk: ${free_gb} GB free under $dir (the virtual environment needs about ${need_gb} GB while installing)"
if [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
  echo "error: not enough disk to install the virtual environment: ${free_gb} GB free under $dir, about ${need_gb} GB" \
       "needed. Free some space (or set TMPDIR and VENV=... to a larger disk) and run make again." >&2
  exit 1
fi
