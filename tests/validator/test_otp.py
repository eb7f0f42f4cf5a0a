"""The HMAC composed from two hashes equals `hmac.digest`; truncation matches pyotp."""

from __future__ import annotations

import base64
import hmac

import pyotp
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Hash
from validator.otp import digest, hotp, pack_counter, truncate


@settings(max_examples=400, deadline=None)
@given(key=st.binary(min_size=0, max_size=300), message=st.binary(max_size=200),
       algorithm=st.sampled_from(list(Hash)))
def test_digest_equals_hmac_digest(key: bytes, message: bytes, algorithm: str) -> None:
    assert digest(key, message, algorithm) == hmac.digest(key, message, algorithm)


def test_digest_at_block_size_edges() -> None:
    for algorithm, block in (("sha1", 64), ("sha256", 64), ("sha512", 128)):
        for n in (0, 1, block - 1, block, block + 1, 2 * block):
            key = bytes(range(256))[:n] if n <= 256 else bytes(n)
            msg = pack_counter(123_456_789)
            assert digest(key, msg, algorithm) == hmac.digest(key, msg, algorithm), (algorithm, n)


def test_other_algorithms_fall_back_to_hmac_digest() -> None:
    assert digest(b"k", b"m", "md5") == hmac.digest(b"k", b"m", "md5")


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=16, max_size=64), counter=st.integers(0, 2**63 - 1),
       digits=st.sampled_from([6, 7, 8]))
def test_hotp_matches_pyotp(key: bytes, counter: int, digits: int) -> None:
    secret = base64.b32encode(key).decode()
    expected = pyotp.HOTP(secret, digits=digits).at(counter)
    assert hotp(key, counter, digits) == expected
    assert truncate(digest(key, pack_counter(counter), "sha1"), digits) == expected
