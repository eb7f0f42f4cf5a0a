"""A script that reads a code from a token on a serial port, run as a separate process."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def test_the_script_reads_the_code_shown_on_the_token(foblab_token):
    fob = foblab_token(port="pty")            # the token is on a PTY, as if on USB serial
    out = subprocess.run([sys.executable, "-m", "mfa_app.serial_reader", fob.port_url],
                         cwd=HERE, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == fob.display()
