"""Bounded parsing of seed files: every limit refuses cleanly and names itself, the
defusedxml protections hold, and generated PSKC and CSV (hypothesis, in a subprocess, so a
crash or a hang is seen rather than suffered) end in a clean import or a clean refusal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from validator.errors import SeedFileError, SeedFileLimit
from validator.importers import ImportLimits, bounded_tree, parse_csv, parse_pskc

T0 = 1_700_000_000.0
NS = "urn:ietf:params:xml:ns:keyprov:pskc"
KEY = (f'<KeyPackage><DeviceInfo><SerialNo>S{{n}}</SerialNo></DeviceInfo>'
       f'<Key Id="S{{n}}" Algorithm="{NS}:totp"><Data><Secret><PlainValue>'
       'MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=</PlainValue></Secret></Data></Key></KeyPackage>')


def container(body: str) -> bytes:
    return f'<KeyContainer Version="1.0" xmlns="{NS}">{body}</KeyContainer>'.encode()


def keys(n: int) -> bytes:
    return container("".join(KEY.format(n=i) for i in range(n)))


@pytest.mark.parametrize("data,limits,fragment", [
    (container("<a>" * 40 + "</a>" * 40), ImportLimits(),
     "elements nest deeper than 32 levels (import_max_depth)"),
    (container("<a/>" * 101), ImportLimits(max_elements=100),
     "more than 100 elements (import_max_elements)"),
    (keys(11), ImportLimits(max_keys=10), "more than 10 keys (import_max_keys)"),
    (keys(5), ImportLimits(max_bytes=1024), "bytes; the limit is 1024 (max_import_bytes)"),
    (container("<a>" + "x" * 5000 + "</a>"), ImportLimits(),
     "more than 4096 characters of text (import_max_field_chars)"),
])
def test_pskc_limits_name_themselves(data: bytes, limits: ImportLimits,
                                     fragment: str) -> None:
    with pytest.raises(SeedFileLimit) as info:
        parse_pskc(data, now=T0, limits=limits)
    assert fragment in info.value.message and info.value.code == "seed_file_limit"


def test_within_the_limits_is_read() -> None:
    parsed = parse_pskc(keys(10), now=T0, limits=ImportLimits(max_keys=10))
    assert [r.serial for r in parsed.records] == [f"S{i}" for i in range(10)]


@pytest.mark.parametrize("doc,fragment", [
    ('<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>',
     "declares XML entities"),
    ('<!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/passwd">]><l>&x;</l>',
     "declares XML entities"),
    ("<KeyContainer", "not well-formed XML"),
    ("", "not well-formed XML"),
])
def test_entities_and_broken_xml_are_refused(doc: str, fragment: str) -> None:
    with pytest.raises(SeedFileError, match=fragment):
        bounded_tree(doc.encode())


CSV_HEAD = "serial,secret_hex,kind,digits,period_or_counter,hash\n"


@pytest.mark.parametrize("text,limits,fragment", [
    (CSV_HEAD + "A," + "31" * 70_000 + ",totp,6,30,sha1\n", ImportLimits(),
     "line 2: a field is longer than 4096 characters (import_max_field_chars)"),
    (CSV_HEAD + "A," + "31" * 2100 + ",totp,6,30,sha1\n", ImportLimits(),
     "line 2: a field of 4200 characters; the limit is 4096 (import_max_field_chars)"),
    (CSV_HEAD + "".join(f"R{i},{'31' * 20},totp,6,30,sha1\n" for i in range(6)),
     ImportLimits(max_keys=5), "6 rows; the limit is 5 (import_max_keys)"),
    (CSV_HEAD * 100, ImportLimits(max_bytes=1024), "the limit is 1024 (max_import_bytes)"),
])
def test_csv_limits_name_themselves(text: str, limits: ImportLimits, fragment: str) -> None:
    with pytest.raises(SeedFileLimit) as info:
        parse_csv(text, limits=limits)
    assert fragment in info.value.message


FUZZ = textwrap.dedent('''
    import sys
    from hypothesis import HealthCheck, given, settings, strategies as st
    from validator.errors import ValidatorError
    from validator.service import Validator

    NS = "urn:ietf:params:xml:ns:keyprov:pskc"
    TAGS = ["KeyContainer", "KeyPackage", "Key", "Data", "Secret", "PlainValue", "Counter",
            "TimeInterval", "Time", "TimeDrift", "Policy", "StartDate", "ExpiryDate",
            "KeyUsage", "PINPolicy", "DeviceInfo", "SerialNo", "AlgorithmParameters",
            "ResponseFormat", "EncryptionKey", "MACMethod", "EncryptedValue", "Device",
            "SecretContainer", "Value"]
    ATTRS = ["Id", "Algorithm", "Version", "Length", "Encoding", "Name", "KeyId",
             "KeyAlgorithm", "PINUsageMode"]
    VALUES = ["1.0", NS + ":hotp", NS + ":totp", "HOTP", "totp", "DECIMAL", "8", "0", "-1",
              "MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=", "2099-01-01T00:00:00Z", "2001-01-01",
              "OTP", "Prepend", "SECRET", "TIME_DRIFT", "x" * 50, "99999999999999999999"]
    text = st.one_of(st.sampled_from(VALUES), st.text(max_size=20))

    def element(children):
        return st.builds(
            lambda tag, attrs, body, kids: "<%s%s>%s%s</%s>" % (
                tag, "".join(' %s="%s"' % (k, v.replace('"', "").replace("&", "")
                                           .replace("<", "")) for k, v in attrs.items()),
                body.replace("&", "").replace("<", ""), "".join(kids), tag),
            st.sampled_from(TAGS), st.dictionaries(st.sampled_from(ATTRS), text, max_size=3),
            text, st.lists(children, max_size=4))

    tree = st.recursive(st.just(""), element, max_leaves=30)
    pskc_doc = st.one_of(
        st.builds(lambda t: '<KeyContainer Version="1.0" xmlns="%s">%s</KeyContainer>'
                  % (NS, t), tree),
        tree, st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
    cell = st.one_of(st.sampled_from(["totp", "hotp", "sha1", "sha256", "6", "8", "30", "",
                                      "31" * 20, "zz", "-5", "0", '"', "\\n"]),
                     st.text(max_size=12))
    row = st.lists(cell, min_size=0, max_size=8).map(",".join)
    csv_doc = st.lists(row, max_size=8).map(
        lambda rows: "\\n".join(["serial,secret_hex,kind,digits,period_or_counter,hash"]
                               + rows))

    # Mostly-valid files too, so that imports happen and their parameters are fuzzed.
    serial = st.text("ABCXYZ0123-", min_size=1, max_size=6)
    templated_key = st.builds(
        lambda sn, alg, digits, step, counter, policy: (
            '<KeyPackage><DeviceInfo><SerialNo>%s</SerialNo></DeviceInfo>'
            '<Key Id="%s" Algorithm="%s"><AlgorithmParameters><ResponseFormat Length="%s" '
            'Encoding="DECIMAL"/></AlgorithmParameters><Data><Secret><PlainValue>'
            'MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=</PlainValue></Secret><Counter><PlainValue>%s'
            '</PlainValue></Counter><TimeInterval><PlainValue>%s</PlainValue></TimeInterval>'
            '</Data><Policy>%s</Policy></Key></KeyPackage>'
            % (sn, sn, alg, digits, counter, step, policy)),
        serial, st.sampled_from([NS + ":totp", NS + ":hotp", "HOTP", NS + ":pin", "ocra"]),
        st.sampled_from(["6", "8", "4", "12", "x"]),
        st.sampled_from(["30", "60", "0", "-30", "1"]),
        st.sampled_from(["0", "5", "18446744073709551616", "-1", "2251799813685248"]),
        st.sampled_from(["", "<KeyUsage>OTP</KeyUsage>", "<KeyUsage>CR</KeyUsage>",
                         "<ExpiryDate>2001-01-01T00:00:00Z</ExpiryDate>",
                         "<ExpiryDate>2099-01-01T00:00:00Z</ExpiryDate>",
                         "<StartDate>2099-01-01</StartDate>", "<Foo/>",
                         '<PINPolicy PINUsageMode="Prepend"/>']))
    pskc_doc = st.one_of(pskc_doc, st.lists(templated_key, min_size=1, max_size=5).map(
        lambda ks: '<KeyContainer Version="1.0" xmlns="%s">%s</KeyContainer>'
        % (NS, "".join(ks))))
    good_row = st.builds(lambda sn, kind, digits, poc, h: ",".join(
        [sn, "31" * 20, kind, digits, poc, h]), serial, st.sampled_from(["totp", "hotp"]),
        st.sampled_from(["6", "8", ""]), st.sampled_from(["30", "0", "7", ""]),
        st.sampled_from(["sha1", "sha256", ""]))
    csv_doc = st.one_of(csv_doc, st.lists(good_row, min_size=1, max_size=6).map(
        lambda rows: "\\n".join(["serial,secret_hex,kind,digits,period_or_counter,hash"]
                               + rows)))

    v = Validator.open(sys.argv[1])
    outcomes = {"imported": 0, "refused": 0}

    @settings(max_examples=int(sys.argv[2]), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(pskc_doc.map(lambda d: ("pskc", d)), csv_doc.map(lambda d: ("csv", d))),
           st.booleans())
    def run(doc, dry):
        fmt, content = doc
        try:
            v.import_seed_file(content, fmt, skip_duplicates=True, dry_run=dry,
                               passphrase="qwerty", now=1.7e9)
            outcomes["imported"] += 1
        except ValidatorError:
            outcomes["refused"] += 1

    run()
    print(outcomes["imported"], outcomes["refused"])
''')


def test_fuzzed_seed_files_import_or_refuse_cleanly(tmp_path: Path) -> None:
    """Any other exception, a crash (a signal) or a hang fails this test."""
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "f.db"), "400"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    imported, refused = map(int, out.stdout.split())
    assert imported + refused == 400 and imported > 0 and refused > 0
