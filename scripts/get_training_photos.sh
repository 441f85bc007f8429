#!/usr/bin/env bash
# Assemble the training photographs listed in shared/training-photos.tsv from
# Debian packages (apt-get download + dpkg-deb -x; nothing is installed and the
# system's apt settings are left alone), verifying each one's sha256.
#
# Usage: scripts/get_training_photos.sh [DEST] [--tsv FILE] [--workdir DIR] [--mirror URL]
#   DEST       default <repo>/data/photos (git-ignored; never commit photos)
#   --tsv      default $RIBSR_PHOTOS_TSV, else <shared>/training-photos.tsv, where
#              <shared> is $RIBSR_SHARED, else <repo>/../shared
# Idempotent: photos already in DEST with the right hash are not downloaded again.
# Exit status: 0 all photos present, 2 some skipped (the summary says which and why).
#
# The work is done by `ribsr data fetch` (run here as `python3 -m ribsr_cli data
# fetch`); this wrapper only fixes the defaults relative to the repository and
# picks the interpreter ($PYTHON, default python3). Next: `ribsr data prepare`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RIBSR_PHOTOS_DIR="${RIBSR_PHOTOS_DIR:-$repo/data/photos}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
esac
exec "${PYTHON:-python3}" -m ribsr_cli data fetch "$@"
