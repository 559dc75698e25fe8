#!/usr/bin/env bash
# Times each setup step of `make demo` in a fresh clone, with uv's cache emptied first; then a package start
# with and without bytecode compiled at install (PYTHONDONTWRITEBYTECODE is set on this machine).
set -euo pipefail
echo "PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-unset}"
t() { local s=$(date +%s.%N); "$@" > /dev/null 2>&1; python3 -c "print(f'{$(date +%s.%N) - $s:6.1f} s  ' + '''$*''')"; }
rm -rf ~/.cache/uv venv-a venv-b
t python3 -m venv venv-a
t venv-a/bin/pip install -q uv
t venv-a/bin/uv pip install -q --python venv-a/bin/python torch==2.14.1 torchvision==0.29.1
t venv-a/bin/uv pip install -q --python venv-a/bin/python -e .
t venv-a/bin/googlenet --help
t venv-a/bin/googlenet --help
rm -rf ~/.cache/uv
t python3 -m venv venv-b
t venv-b/bin/pip install -q uv
t venv-b/bin/uv pip install -q --compile-bytecode --python venv-b/bin/python torch==2.14.1 torchvision==0.29.1
t venv-b/bin/uv pip install -q --compile-bytecode --python venv-b/bin/python -e .
t venv-b/bin/googlenet --help
t venv-b/bin/googlenet --help
rm -rf venv-a venv-b
