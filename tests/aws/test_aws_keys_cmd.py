"""`foblab validator aws-keys create|list|delete` on a running daemon's folder: a created
key signs requests at once, a deleted one is refused at once."""

from __future__ import annotations

import json
import sqlite3

import pytest
from aws_helpers import error_of, foblab
from botocore.exceptions import ClientError


def test_create_list_delete(daemon) -> None:
    folder = str(daemon.folder)
    made = json.loads(foblab("validator", "aws-keys", "create", "--dir", folder,
                             "--json").stdout)
    assert set(made) == {"access_key_id", "secret_access_key", "user"} and made["user"] is None
    akid, secret = made["access_key_id"], made["secret_access_key"]
    assert akid.startswith("AKIA") and len(akid) == 20 and len(secret) == 40

    listed = json.loads(foblab("validator", "aws-keys", "list", "--dir", folder,
                               "--json").stdout)
    assert akid in [k["access_key_id"] for k in listed]
    assert secret not in foblab("validator", "aws-keys", "list", "--dir", folder).stdout

    # The secret is sealed in the database, never stored in the clear.
    db = sqlite3.connect(daemon.db)
    try:
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert akid in dump and secret not in dump and secret.encode().hex() not in dump

    iam = daemon.client("iam", key=(akid, secret))
    assert iam.list_virtual_mfa_devices()["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert foblab("validator", "aws-keys", "delete", "--dir", folder, akid).returncode == 0
    with pytest.raises(ClientError) as exc:
        iam.list_virtual_mfa_devices()
    assert error_of(exc)[:2] == ("InvalidClientTokenId", 403)

    again = foblab("validator", "aws-keys", "delete", "--dir", folder, akid, check=False)
    assert again.returncode == 1 and again.stderr.startswith("foblab: error: no access key")


def test_explicit_paths_and_errors(daemon, tmp_path) -> None:
    listed = foblab("validator", "aws-keys", "list", "--db", str(daemon.db), "--key-file",
                    str(daemon.key_file), "--json")
    assert daemon.access_key_id in listed.stdout
    for args in (["--dir", str(tmp_path)], [], ["--db", str(tmp_path / "none.db"),
                                                 "--key-file", str(daemon.key_file)],
                 ["--db", str(daemon.db), "--key-file", str(tmp_path / "none.key")]):
        done = foblab("validator", "aws-keys", "list", *args, check=False)
        assert done.returncode == 1, args
        assert done.stderr.startswith("foblab: error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "none.key").exists()  # never a fresh key beside a database
