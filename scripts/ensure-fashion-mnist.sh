#!/usr/bin/env bash
# Make sure Fashion-MNIST is on disk: Debian's package when we are root with apt, else a
# checksum-verified download from the dataset's official source into ~/.cache/edgetl.
set -euo pipefail
PY=${PY:-.venv/bin/python}
found=$("$PY" -c 'from edgetl.datasets import fashion_mnist_dir as f; d = f(); print(d or "")')
if [ -n "$found" ]; then
  echo "Fashion-MNIST: $found"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist"
  if (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; then
    "$PY" -c 'from edgetl.datasets import fashion_mnist_dir as f; assert f(), "not found after apt"' && exit 0
  fi
  echo "Fashion-MNIST: apt install failed; trying the official download" >&2
fi
if "$PY" -c 'from edgetl.datasets import download_fashion_mnist as d; print("Fashion-MNIST:", d())'; then
  exit 0
fi
cat >&2 <<MSG
Fashion-MNIST is not available and could not be installed.
Fix one of:
  - as root: apt-get install dataset-fashion-mnist   (installs /usr/share/datasets/fashion-mnist)
  - download the four *-ubyte.gz files from http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/
    into ~/.cache/edgetl/fashion-mnist, or set EDGETL_FASHION_MNIST to a folder holding them.
MSG
exit 1
