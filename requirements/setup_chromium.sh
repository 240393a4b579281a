#!/bin/sh
# Headless Chromium for the HTML report's rendering test (tests/test_report.py).
#
# Debian packages `chromium` and `chromium-driver`; installed only when /usr/bin/chromium is
# missing, so `make setup` stays a no-op once it is there. Needs root (or sudo) and the Debian
# archive; prints one clear line and exits non-zero when it cannot install.
set -u

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_chromium: $CHROMIUM is missing and apt-get is not available; install Chromium by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup_chromium: $CHROMIUM is missing and installing it needs root: run 'apt-get install chromium chromium-driver' as root" >&2
        exit 1
    fi
fi

echo "setup_chromium: installing chromium and chromium-driver (Debian packages; a few minutes)..." >&2
LOG=$(mktemp)
install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >"$LOG" 2>&1
}
# A fresh container has no package lists: update once when the first try cannot find the package.
if ! install; then
    $SUDO apt-get update -q >>"$LOG" 2>&1
    if ! install; then
        echo "setup_chromium: apt-get install chromium chromium-driver failed; last lines of the log:" >&2
        tail -n 5 "$LOG" >&2
        rm -f "$LOG"
        exit 1
    fi
fi
rm -f "$LOG"
if [ ! -x "$CHROMIUM" ]; then
    echo "setup_chromium: the packages installed but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "setup_chromium: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed" >&2
