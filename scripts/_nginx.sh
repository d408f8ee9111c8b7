# The balancer the cluster tests and scripts/cluster run: Debian's nginx, installed with apt-get
# when no nginx is on PATH or at /usr/sbin/nginx. If it cannot be installed, the cluster tests
# that need it skip on a developer's machine and fail in CI.
find_nginx() {
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }
}

ensure_nginx() {
  if [ -n "$(find_nginx)" ]; then
    return 0
  fi
  if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    echo "$0: nginx is missing; install Debian's nginx-light (or nginx) package" >&2
    return 0
  fi
  echo "$0: installing Debian's nginx-light" >&2
  if ! { apt-get update -qq &&
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }; } >/dev/null; then
    echo "$0: could not install nginx" >&2
  fi
}
