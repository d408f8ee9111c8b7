# Start the local services the tests and scripts/cluster talk to (PostgreSQL on 5432, Redis on
# 6379), when they are installed but not running.
ensure_services() {
  if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    fi
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  if command -v redis-cli >/dev/null && ! redis_answers; then
    if command -v redis-server >/dev/null; then
      if [ -f /etc/redis/redis.conf ]; then
        redis-server /etc/redis/redis.conf --daemonize yes || true
      else
        redis-server --bind 127.0.0.1 --port 6379 --daemonize yes || true
      fi
    fi
    for _ in $(seq 1 30); do redis_answers && break; sleep 1; done
  fi
}

redis_answers() {
  [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
}
