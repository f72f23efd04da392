# Sourced by the set-up scripts.

# pip_install PYTHON ARGS...: pip install with its output kept in a log beside the environment; printed only on failure.
pip_install() {
  local python=$1 log
  shift
  log="$(dirname "$(dirname "$python")")/pip.log"
  if ! "$python" -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -n 40 >&2
    echo "pip install $* failed; the whole log is in $log" >&2
    return 1
  fi
}
