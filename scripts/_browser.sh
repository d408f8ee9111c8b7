# The browser the page tests drive (tests/web): Debian's Chromium at /usr/bin/chromium,
# installed with apt-get when it is missing. Never a test tool's own browser download.
# If it cannot be installed, the browser tests skip on a developer's machine and fail in CI.
ensure_browser() {
  if [ -x /usr/bin/chromium ]; then
    return 0
  fi
  if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    echo "scripts/test: /usr/bin/chromium is missing; install Debian's chromium package" >&2
    return 0
  fi
  echo "scripts/test: installing Debian's chromium for the browser tests" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null; then
    echo "scripts/test: could not install chromium" >&2
  fi
}
