# Sourced by scripts/install-deps, run, test and build-wheel: which Python environment crio-fast
# lives in. Debian's python3 refuses pip installs into itself (PEP 668, EXTERNALLY-MANAGED), so the
# package goes into a virtual environment of its own, made from the distribution's interpreter.
#
#   PYTHON           the interpreter the environment is made from (default: the distribution's
#                    /usr/bin/python3); when it is itself a venv's interpreter, that venv is used as it
#                    is (scripts/vm's guests install into /opt/venv; a developer's own venv works too)
#   CRIO_FAST_VENV   the dedicated environment (default /opt/crio-fast)
#   CRIO_FAST_LINK   where the `crio-fast` command is linked (default /usr/local/bin/crio-fast;
#                    empty: no link)

if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
CRIO_FAST_VENV=${CRIO_FAST_VENV:-/opt/crio-fast}
CRIO_FAST_LINK=${CRIO_FAST_LINK-/usr/local/bin/crio-fast}

# True when $PYTHON runs inside a virtual environment (its prefix differs from its base).
python_is_venv() {
  "$PYTHON" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null
}

# The interpreter of the environment crio-fast is (or is to be) installed in.
crio_fast_python() {
  if python_is_venv; then
    echo "$PYTHON"
  else
    echo "$CRIO_FAST_VENV/bin/python"
  fi
}
