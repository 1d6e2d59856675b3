#!/usr/bin/env bash
# Fetch, on this (networked) machine, what the GPU machine's image lacks, into .whl/ (git-ignored),
# for bench/gpu_checks.sh: wheels for its Python 3.12 (its own torch and torchvision are used) and,
# torchcodec where the image has FFmpeg.
#   bash bench/gpu_wheels.sh            # then carry .whl in the device run (64 MiB in all)
# The device image had torch 2.11 (2026-11): torchcodec 0.11 is the release built against it.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
W=.whl
mkdir -p "$W"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
$PIP download -q --no-deps "${plat[@]}" -d "$W" av==18.1.0 decord==0.6.0 torchcodec==${TORCHCODEC:-0.11.0}
# pure-Python packages (some publish only source archives: build them as wheels)
$PIP wheel -q --no-deps -w "$W" fvcore==0.1.5.post20221221 iopath==0.1.10 pytorchvideo==0.1.5 \
    yacs==0.1.8 parameterized==0.9.0 termcolor==3.3.0
# torchcodec also needs FFmpeg's shared libraries (libavcodec & co.); av and decord bring their own.
# Debian's packages pull in ~100 MB of codec libraries, over the 64 MiB a device call carries, so
# gpu_checks.sh runs the torchcodec steps only where the image has FFmpeg and skips them otherwise.
du -sh "$W"
