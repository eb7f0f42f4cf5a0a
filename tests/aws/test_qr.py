"""The QRCodePNG of CreateVirtualMFADevice is a real PNG that a real decoder (zxing-cpp)
reads, holding the otpauth:// URI with the very seed returned beside it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from aws_helpers import decode_qr


def test_qr_png_decodes_to_the_otpauth_uri(iam) -> None:
    device = iam.create_virtual_mfa_device(VirtualMFADeviceName="qr.phone+1@example")[
        "VirtualMFADevice"]
    png = device["QRCodePNG"]  # boto3 decoded the base64 blob
    seed = device["Base32StringSeed"].decode()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    texts = decode_qr(png)
    assert len(texts) == 1, texts
    uri = urlsplit(texts[0])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert uri.path == "/qr.phone%2B1%40example@123456789012"
    assert parse_qs(uri.query) == {"secret": [seed]}
    # The seed appears nowhere after creation, not even in the device list.
    listed = iam.list_virtual_mfa_devices()["VirtualMFADevices"]
    assert all(set(d) <= {"SerialNumber", "User", "EnableDate", "Tags"} for d in listed)
    iam.delete_virtual_mfa_device(SerialNumber=device["SerialNumber"])


def test_decoder_is_not_fooled_by_a_blank_image() -> None:
    import io

    from PIL import Image

    blank = io.BytesIO()
    Image.new("L", (40, 40), 255).save(blank, format="PNG")
    assert decode_qr(blank.getvalue()) == []
