#!/usr/bin/env bash
# Create (or reuse) a virtual environment from a committed lock file and link it into the repo.
#
#   requirements/setup_env.sh LINK LOCK [PYTHON]
#
# The environment lives in a cache keyed by the lock file's hash
# (${LMD_BATCH_ENV_CACHE:-~/.cache/lmd-batch/envs}/<name>-<hash>), so a second checkout or CI run
# on the same machine reuses it, and a changed lock builds a new one. LINK (.venv, .venv-llm) is a
# symlink to it. Venvs are not relocatable, so we build in place and write a `.complete` marker
# last; a folder without the marker is a killed build and is rebuilt.
set -euo pipefail
link=$1 lock=$2 python=${3:-python3.11}
name=$(basename "$link" | sed 's/^\.//')
hash=$(sha256sum "$lock" | cut -c1-16)
cache=${LMD_BATCH_ENV_CACHE:-$HOME/.cache/lmd-batch/envs}
target="$cache/$name-$hash"
mkdir -p "$cache"
exec 9>"$cache/.$name.lock"
flock 9
if [ ! -f "$target/.complete" ]; then
  command -v "$python" >/dev/null || { echo "setup: $python not found (Python 3.11 is required)" >&2; exit 1; }
  echo "setup: building $name environment from $lock into $target (a few minutes, once per lock)"
  rm -rf "$target"
  "$python" -m venv "$target"
  "$target/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$lock"
  touch "$target/.complete"
fi
if [ -e "$link" ] && [ ! -L "$link" ]; then
  echo "setup: $link exists and is not a link made by setup; remove it and run make setup again" >&2
  exit 1
fi
ln -sfn "$target" "$link"
echo "setup: $link -> $target"
