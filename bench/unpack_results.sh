#!/usr/bin/env bash
# Unpack the tarballs of a GPU session (bench/gpu_session.sh) into bench/results/<device-slug>-<date>/<stage>/.
# usage: bash bench/unpack_results.sh FILE.tgz...   (the .tgz files the device tool copied under its files_at folder)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: bash bench/unpack_results.sh FILE.tgz..." >&2; exit 2; }
for tgz in "$@"; do
    tmp=$(mktemp -d)
    tar xzf "$tgz" -C "$tmp"
    for dir in "$tmp"/*/; do
        stage=$(basename "$dir")
        slug=$(cat "$dir/device-slug" 2>/dev/null || echo unknown-device)
        day=$(sed -n 's/^date=//p' "$dir/stage.txt" 2>/dev/null || true)
        dest="$repo/bench/results/$slug-${day:-$(date -u +%F)}/$stage"
        rm -rf "$dest"
        mkdir -p "$(dirname "$dest")"
        mv "$dir" "$dest"
        echo "$tgz -> ${dest#"$repo"/}"
    done
    rm -rf "$tmp"
done
