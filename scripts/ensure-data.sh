#!/usr/bin/env bash
# Make sure Fashion-MNIST (Debian package dataset-fashion-mnist) is installed.
set -euo pipefail
DIR="${HETSEARCH_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)…"
  if ! apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  fi
  exit 0
fi
cat >&2 <<MSG
Fashion-MNIST was not found under $DIR.
Install it with:   sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu)
or point hetsearch at its four idx .gz files with --data-dir DIR (or HETSEARCH_FASHION_MNIST=DIR),
or use your own data with --data FOLDER (ImageFolder layout) or --data FILE.npz.
MSG
exit 1
