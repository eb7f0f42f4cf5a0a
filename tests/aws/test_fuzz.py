"""Random, correctly signed requests of every action with hostile parameter values: the
daemon answers each with AWS XML and a status below 500 (botocore would retry a 500)."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

from aws_helpers import signed_post

from validator.aws.actions import IAM_ACTIONS, STS_ACTIONS

PARAMS = ["UserName", "SerialNumber", "AuthenticationCode1", "AuthenticationCode2",
          "VirtualMFADeviceName", "Path", "Marker", "MaxItems", "AssignmentStatus",
          "DurationSeconds", "TokenCode", "Tags.member.1.Key", "Tags.member.1.Value",
          "TagKeys.member.1", "Tags.member.2.Key", "MinimumSessionTokenSize"]
VALUES = ["", "0", "-1", "123456", "1234567", "12345a", "9" * 40, "/", "//", "/a/",
          "arn:aws:iam::123456789012:mfa/x", "GAHT00000001", "a" * 300, "é", "\x00", "\n",
          "' OR 1=1 --", "<x>&amp;</x>", "Any", "Assigned", "%", "Zm9vYmxhYjo=", "1e3",
          "nan", "１２３４５６", "129600", "899", " 900", "foblab:", "../../etc"]


def test_random_requests_never_fail_the_server(daemon) -> None:
    rng = random.Random(7)
    key = (daemon.access_key_id, daemon.secret_access_key)
    actions = [(a, "2010-05-08") for a in IAM_ACTIONS] + [(a, "2011-06-15")
                                                         for a in STS_ACTIONS]
    for _ in range(250):
        action, version = rng.choice(actions)
        fields = {"Action": action, "Version": version}
        for name in rng.sample(PARAMS, rng.randint(0, 5)):
            fields[name] = rng.choice(VALUES)
        response = signed_post(daemon.url, urlencode(fields),
                               key, service="sts" if version == "2011-06-15" else "iam")
        assert response.status_code < 500, (fields, response.text)
        root = ET.fromstring(response.content)
        assert root.tag.endswith("Response"), response.text
