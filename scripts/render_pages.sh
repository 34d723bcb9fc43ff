#!/usr/bin/env bash
# Render a run's landing page (or any report page) to PNG in headless Chromium,
# full page at 1400 px wide, to look at the pages as a reviewer sees them.
# A visual check by a person, not part of the test suite (helpers.report_checks
# is the automatic one).
#
#   scripts/render_pages.sh results/phantom                 # its index.html
#   scripts/render_pages.sh results/phantom results/compare/compare_datasets.html
#   OUT=/tmp/pages WIDTH=1400 MAX_HEIGHT=30000 scripts/render_pages.sh results/*/
#
# Writes OUT/<folder>_<page>.png (OUT default: /tmp/rendered_pages) and prints
# each file with its height. A folder stands for its index.html.
#
# Needs Debian's Chromium (not a Python package):
#   sudo apt-get install -y chromium fonts-dejavu-core
# ($CHROMIUM names another binary: chromium, chromium-browser, google-chrome.)
# Chromium takes one screenshot of a window: the window is MAX_HEIGHT px tall
# and the blank space below the page is cropped (Pillow, from the study's
# environment); a page taller than MAX_HEIGHT is cut there, with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/rendered_pages}"
WIDTH="${WIDTH:-1400}"
MAX_HEIGHT="${MAX_HEIGHT:-16000}"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

browser="${CHROMIUM:-}"
if [ -z "$browser" ]; then
  for candidate in chromium chromium-browser google-chrome; do
    command -v "$candidate" >/dev/null 2>&1 && { browser="$candidate"; break; }
  done
fi
[ -n "$browser" ] || { echo "render_pages: no Chromium found; install it: sudo apt-get install -y chromium" >&2; exit 2; }
[ "$#" -gt 0 ] || { echo "usage: scripts/render_pages.sh RESULTS_DIR_OR_PAGE.html ..." >&2; exit 2; }
mkdir -p "$OUT"

status=0
for target in "$@"; do
  page="$target"
  [ -d "$target" ] && page="${target%/}/index.html"
  if [ ! -f "$page" ]; then
    echo "render_pages: $page does not exist (a results folder needs an index.html)" >&2
    status=1
    continue
  fi
  name="$(basename "$(dirname "$(realpath "$page")")")_$(basename "$page" .html).png"
  # a throwaway profile: no state of an earlier run, no first-run dialogs
  profile="$(mktemp -d)"
  "$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --user-data-dir="$profile" --force-device-scale-factor=1 --run-all-compositor-stages-before-draw \
    --virtual-time-budget=5000 --window-size="$WIDTH,$MAX_HEIGHT" \
    --screenshot="$OUT/$name" "file://$(realpath "$page")" >/dev/null 2>&1 || {
      echo "render_pages: Chromium failed on $page" >&2; rm -rf "$profile"; status=1; continue; }
  rm -rf "$profile"
  "$PY" - "$OUT/$name" "$MAX_HEIGHT" <<'EOF'
import sys
from PIL import Image, ImageChops

path, limit = sys.argv[1], int(sys.argv[2])
image = Image.open(path).convert("RGB")
background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
box = ImageChops.difference(image, background).getbbox()
bottom = min(image.height, (box[3] if box else 0) + 24)
if box and box[3] >= image.height - 1:
    print(f"render_pages: warning: {path}: the page is taller than {limit} px and was cut (MAX_HEIGHT)", file=sys.stderr)
image.crop((0, 0, image.width, bottom)).save(path, optimize=True)
print(f"{path}: {image.width}×{bottom} px")
EOF
done
exit "$status"
