"""A process that accepted a code is SIGKILLed right after; a fresh process refuses it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from validator.core import Reason
from validator.otp import hotp
from validator.service import Validator

T0 = 1_700_000_000.0
SEED = bytes.fromhex("00112233445566778899aabbccddeeff00112233")
ROOT = Path(__file__).resolve().parents[2]


def test_sigkill_after_accept_keeps_code_dead(db_path: Path) -> None:
    v = Validator.open(db_path)
    v.register_token("TOK1", SEED, now=T0)
    s = int(T0 // 30)
    v.enable("alice", "TOK1", hotp(SEED, s - 1), hotp(SEED, s), now=T0)
    v.close()
    t = T0 + 30
    code = hotp(SEED, s + 1)
    child = textwrap.dedent(f"""
        import os, signal, sys
        from validator.service import Validator
        v = Validator.open({str(db_path)!r})
        r = v.verify("alice", {code!r}, now={t!r})
        sys.stdout.write("accepted\\n" if r.accepted else "refused\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no atexit
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.strip() == "accepted"
    assert os.path.exists(f"{db_path}-wal")  # the commit lives in the WAL, not yet merged
    fresh = Validator.open(db_path)
    try:
        assert fresh.verify("alice", code, now=t + 1).reason is Reason.REPLAYED
    finally:
        fresh.close()
