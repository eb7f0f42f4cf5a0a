"""The core takes serial numbers as long as AWS's (virtual devices' ARNs run to 256)."""

from __future__ import annotations

from pathlib import Path

import pytest

from validator.errors import InvalidParameter
from validator.service import Validator


def test_serials_up_to_256_characters(tmp_path: Path) -> None:
    v = Validator.open(tmp_path / "v.db")
    try:
        longest = "arn:aws:iam::123456789012:mfa/" + "n" * (256 - 30)
        assert len(longest) == 256
        assert v.register_token(longest, b"k" * 20, now=0).serial == longest
        with pytest.raises(InvalidParameter):
            v.register_token(longest + "x", b"k" * 20, now=0)
    finally:
        v.close()
