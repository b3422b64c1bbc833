# Sourced by demo.sh and test.sh: creates ./.venv, installs the torch CPU build first (a bare
# torch requirement could pull a multi-GB CUDA build), then Vortex from source with the extras
# named in $1, and leaves the environment activated.
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet ".[$1]"
