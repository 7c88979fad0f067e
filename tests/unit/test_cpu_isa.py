"""Importing the package caps oneDNN at AVX2 (its AVX-512 float32 convolutions run at reference speed on CPU), unless
the user chose an ISA."""
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # every test starts a Python process

PRINT_CAP = "import src, os; print(os.environ.get('ONEDNN_MAX_CPU_ISA'))"


def _cap_after_import(**env):
    base = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    out = subprocess.run([sys.executable, "-c", PRINT_CAP], cwd=ROOT, env={**base, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_import_caps_onednn_at_avx2():
    assert _cap_after_import() == "AVX2"


def test_a_users_choice_is_kept():
    assert _cap_after_import(ONEDNN_MAX_CPU_ISA="AVX512_CORE") == "AVX512_CORE"
