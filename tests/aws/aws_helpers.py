"""Helpers shared by the AWS endpoint tests (imported by name: conftest puts this folder
on sys.path)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

ROOT = Path(__file__).resolve().parents[2]
FOBLAB = [sys.executable, "-m", "tools.cli"]


def foblab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `foblab` command (this checkout's) and answer its completed process."""
    return subprocess.run([*FOBLAB, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=check)


@dataclass(frozen=True)
class Otp:
    """Codes computed independently of foblab (pyotp) from a device's base32 seed."""

    seed: str

    def at(self, step: int) -> str:
        return pyotp.TOTP(self.seed).generate_otp(step)

    def wrong(self, near: int) -> str:
        """A well-formed code that no step near `near` shows."""
        taken = {self.at(s) for s in range(near - 50, near + 50)}
        return next(f"{n:06d}" for n in range(123456, 10**6) if f"{n:06d}" not in taken)


def settled_step(period: int = 30, margin: float = 4.0) -> int:
    """The current TOTP step, first waiting out the last `margin` seconds of a step so that
    a short test sequence stays inside it."""
    t = time.time()
    if t % period > period - margin:
        time.sleep(period - t % period + 0.05)
    return int(time.time() // period)


@pytest.fixture
def step() -> int:
    return settled_step()


def error_of(excinfo: pytest.ExceptionInfo) -> tuple[str, int, str]:
    """(AWS code, HTTP status, message) of a botocore ClientError."""
    err = excinfo.value.response
    return (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"],
            err["Error"].get("Message", ""))


def signed_post(url: str, body: bytes | str, key: tuple[str, str], *, service: str = "iam",
                headers: dict[str, str] | None = None, tamper: bytes | None = None):
    """POST `body` to `url`, signed by botocore's own SigV4 signer (the body replaced by
    `tamper` after signing, if given). Answers the httpx response."""
    import httpx
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    data = body.encode() if isinstance(body, str) else body
    request = AWSRequest(method="POST", url=url, data=data, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8", **(headers or {})})
    SigV4Auth(Credentials(*key), service, "us-east-1").add_auth(request)
    with httpx.Client(trust_env=False, timeout=15) as client:
        return client.post(url, content=tamper if tamper is not None else data,
                           headers=dict(request.headers.items()))


def aws_error(response) -> tuple[str, int]:
    """(Code, status) of an AWS ErrorResponse, checking its XML shape on the way."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(response.content)
    ns = root.tag.partition("}")[0] + "}"
    assert root.tag.endswith("ErrorResponse"), response.text
    error = root.find(f"{ns}Error")
    assert error is not None and error.findtext(f"{ns}Type") in ("Sender", "Receiver")
    assert error.findtext(f"{ns}Message")
    assert root.findtext(f"{ns}RequestId")
    return error.findtext(f"{ns}Code") or "", response.status_code


def png_to_gray(png: bytes) -> tuple[bytes, int, int]:
    """A PNG (gray or palette, 1-8 bits, not interlaced: what QR encoders write) as 8-bit
    grayscale pixels, (pixels, width, height). Checks the signature and every chunk CRC."""
    import struct
    import zlib

    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + data) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, data))
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert chunks[0][0] == b"IHDR" and color in (0, 3) and interlace == 0
    palette = next((d for k, d in chunks if k == b"PLTE"), None)
    raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
    stride = (width * depth + 7) // 8
    prev, rows, i = bytearray(stride), [], 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):  # undo the row filter (bpp is 1 byte at depth <= 8)
            a = line[x - 1] if x else 0
            b, c = prev[x], prev[x - 1] if x else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    out = bytearray()
    mask = (1 << depth) - 1
    for line in rows:
        for x in range(width):
            bit = x * depth
            value = (line[bit // 8] >> (8 - depth - bit % 8)) & mask
            if color == 3:
                assert palette is not None
                r, g, b = palette[3 * value:3 * value + 3]
                out.append((r * 299 + g * 587 + b * 114) // 1000)
            else:
                out.append(value * 255 // mask)
    return bytes(out), width, height


def decode_qr(png: bytes) -> list[str]:
    """The texts of every QR code zxing-cpp finds in the PNG."""
    import zxingcpp

    pixels, width, height = png_to_gray(png)
    image = memoryview(pixels).cast("B", (height, width))
    return [r.text for r in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)]
