"""A script that reads the code from a hardware token on a serial port, as a kiosk or an
enrollment station does: `python -m mfa_app.serial_reader PORT_URL` prints the code.

It speaks foblab's token protocol (docs/protocol.md) through `protocol.TokenClient`."""

from __future__ import annotations

import sys

import serial

from protocol import TokenClient, pyserial_reader


def read_code(url: str) -> str:
    with serial.serial_for_url(url, timeout=2) as port:
        return TokenClient(pyserial_reader(port), port.write).press().code


if __name__ == "__main__":
    print(read_code(sys.argv[1]))
