#!/usr/bin/env bash
# What the build needs beyond Rust: cmake and nasm, which build the vendored
# libjpeg-turbo (turbojpeg-sys) with its SIMD code, and WordNet 3.0 (wordnet-base), which
# scripts/build_taxonomy.py reads the classes' hypernyms from. Idempotent; installs with
# apt-get only what is missing.
set -euo pipefail

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "setup-build-tools: ${missing[*]} missing; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
fi
echo "setup-build-tools: installing ${missing[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    echo "setup-build-tools: apt-get install failed; running apt-get update and retrying"
    apt-get update -qq >>"$log" 2>&1 &&
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        echo "setup-build-tools: could not install ${missing[*]}" >&2
        exit 1
    }
fi
rm -f "$log"
for tool in "${missing[@]}"; do
    [ "$tool" = wordnet-base ] && continue
    command -v "$tool" >/dev/null || { echo "setup-build-tools: $tool still not on PATH" >&2; exit 1; }
done
