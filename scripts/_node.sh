# The Node packages of tests/node (OpenAI's Node SDK, pinned in its package-lock.json), for
# tests/openai_api/test_node_sdk.py: `npm ci` only when node_modules is missing or older than
# the lock. Without node and npm, or when the install fails, that test skips on a developer's
# machine; under CI=true this step fails instead.
ensure_node_packages() {
  local dir=tests/node
  local in_ci=0
  case "${CI:-}" in 1 | [Tt]rue | TRUE | [Yy]es | YES) in_ci=1 ;; esac
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "scripts/test: node and npm are missing; the Node SDK test needs Node.js 20+" >&2
    [ "$in_ci" = 0 ] && return 0
    return 1
  fi
  local stamp="$dir/node_modules/.package-lock.json"
  if [ -f "$stamp" ] && [ ! "$dir/package-lock.json" -nt "$stamp" ]; then
    return 0
  fi
  echo "scripts/test: installing tests/node's packages (npm ci)" >&2
  if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error); then
    echo "scripts/test: npm ci failed in $dir" >&2
    [ "$in_ci" = 0 ] && return 0
    return 1
  fi
}
