#!/usr/bin/env bash
# Download the wheels of bench/gpu-wheels.txt into .whl/ for the device machine (CPython 3.12, x86-64 manylinux),
# without their dependencies, and check that each package comes once. Run from anywhere; needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
rm -rf "$dest"
mkdir -p "$dest"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" -r bench/gpu-wheels.txt
names=$(cd "$dest" && printf '%s\n' *.whl)
dupes=$(cut -d- -f1 <<<"$names" | sort | uniq -d)
if [ -n "$dupes" ]; then
    echo "gpu-wheels: more than one version of: $dupes" >&2
    exit 1
fi
ls -l "$dest"
echo "gpu-wheels: $(wc -l <<<"$names") wheels, $(du -sk "$dest" | cut -f1) KiB in $dest/ (carry: [\".whl\"])"
