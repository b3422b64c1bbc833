# Sourced by demo.sh and test.sh: makes sure bubblewrap (the RSI sandbox's jail) is installed,
# creates ./.venv, installs the torch CPU build first (a bare torch requirement could pull a
# multi-GB CUDA build), then Vortex from source with the extras named in $1, and leaves the
# environment activated.
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing bubblewrap (the jail of Vortex's RSI sandbox)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null \
            || echo "WARNING: apt-get install bubblewrap failed" >&2
    elif [ "$(id -u)" = 0 ] && command -v dnf >/dev/null 2>&1; then
        dnf install -y -q bubblewrap || echo "WARNING: dnf install bubblewrap failed" >&2
    fi
fi
if ! command -v bwrap >/dev/null 2>&1; then
    cat >&2 <<'EOF'
************************************************************************************************
WARNING: bubblewrap (bwrap) is not installed. Vortex's RSI sandbox then runs candidate patches
UNJAILED (no namespaces, no quota) and never applies them automatically. Install it:
    sudo apt-get install bubblewrap        # Debian, Ubuntu
    sudo dnf install bubblewrap            # Fedora, RHEL
    sudo pacman -S bubblewrap              # Arch
************************************************************************************************
EOF
fi
# promtool and the Prometheus server (tests/monitor: the exposition is checked by promtool and
# scraped by a real server), wrk (benchmarks/bench_http.py's load generator) and, for the tests,
# the distribution's Chromium (tests/dashboard drive it; never a downloaded browser); their
# tests skip, saying why, where they are missing
tools="promtool:prometheus wrk:wrk"
if [ "${1:-}" = test ]; then tools="$tools chromium:chromium"; fi
for tool in $tools; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${tool#*:}" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null \
            || echo "WARNING: apt-get install ${tool#*:} failed" >&2
    fi
done
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet ".[$1]"
