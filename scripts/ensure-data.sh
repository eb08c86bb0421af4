#!/usr/bin/env bash
# Make sure Fashion-MNIST is on disk: install the Debian package when it is missing
# and apt is usable (root, or passwordless sudo). Otherwise explain both fixes.
set -euo pipefail
marker="${1:-/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz}"
[ -f "$marker" ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist && exit 0
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist && exit 0
  fi
fi
echo "Fashion-MNIST not found at $marker." >&2
echo "Fix: 'apt-get install -y dataset-fashion-mnist' (as root), or pass --data-dir DIR" >&2
echo "with torchvision's layout (DIR/FashionMNIST/raw/*-ubyte)." >&2
exit 1
