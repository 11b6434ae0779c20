#!/usr/bin/env bash
# Install what the dashboard needs and start it on http://localhost:8501.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-assets.txt
exec python -m streamlit run app.py "$@"
