"""TLS: `serve --tls-cert/--tls-key` (or the config's tls_cert/tls_key) speaks HTTPS, with
a certificate the test makes; the CLI trusts it with --ca-file (or FOBLAB_CA_FILE) and says
so clearly when it does not; `--tls-client-ca` refuses a client without a certificate; a
reload serves a renewed certificate without dropping a connection."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import (  # noqa: E402
    PYTHON,
    ROOT,
    init_dir,
    metric,
    set_config,
    wait_for_lines,
)
from tls_helpers import make_pki, renew  # noqa: E402

from tools.api_client import ApiClient, ApiError
from tools.cli import main


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`foblab validator ARGS` as a client, in this process (click's runner); `serve` runs
    in a process of its own (`serve_once`)."""
    full: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FOBLAB_")}
    full.update(env or {})
    result = CliRunner().invoke(main, ["validator", *args], env=full)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOBLAB_")}
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)


def test_https_with_a_trusted_ca_and_a_clear_error_without(tmp_path: Path, spawn: Any) -> None:
    pki = make_pki(tmp_path / "pki")
    admin, _ = init_dir(tmp_path / "v")
    d = spawn(tmp_path / "v", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    assert d.url.startswith("https://127.0.0.1:")

    with ApiClient(d.url, admin, ca_file=pki.ca) as client:  # the library
        assert client.list_tokens()["tokens"] == []
    ok = cli("token", "list", "--url", d.url, "--key", admin, "--ca-file", str(pki.ca),
             "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"tokens": []' in ok.stdout
    by_env = cli("token", "list", "--json", env={
        "FOBLAB_URL": d.url, "FOBLAB_KEY": admin, "FOBLAB_CA_FILE": str(pki.ca)})
    assert by_env.returncode == 0, by_env.stderr

    # not trusted: the system's CAs, or a CA that did not sign it
    for extra in ([], ["--ca-file", str(pki.other_ca)]):
        bad = cli("token", "list", "--url", d.url, "--key", admin, *extra)
        assert bad.returncode == 1
        assert "TLS certificate is not trusted" in bad.stderr, bad.stderr
        assert "--ca-file" in bad.stderr and "Traceback" not in bad.stderr
    with pytest.raises(ApiError) as caught, ApiClient(d.url, admin) as client:
        client.health()
    assert caught.value.error == "tls" and caught.value.status is None

    # plain HTTP to the TLS port gets nothing of the API, and says so in one line
    plain = cli("token", "list", "--url", d.url.replace("https", "http"), "--key", admin)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert "cannot reach" in plain.stderr
    # a CA file that is not one
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    junk = cli("token", "list", "--url", d.url, "--key", admin, "--ca-file",
               str(tmp_path / "junk.pem"))
    assert junk.returncode == 1 and "cannot use the CA file" in junk.stderr, junk.stderr
    # the daemon goes on
    with ApiClient(d.url, admin, ca_file=pki.ca) as client:
        assert client.health()["status"] == "ok"


def test_client_certificates_required(tmp_path: Path, spawn: Any) -> None:
    pki = make_pki(tmp_path / "pki")
    admin, _ = init_dir(tmp_path / "v")
    # in the config file this time, relative to its folder
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / "v" / name).write_bytes((tmp_path / "pki" / name).read_bytes())
    set_config(tmp_path / "v", tls_cert="cert.pem", tls_key="key.pem", tls_client_ca="ca.pem")
    d = spawn(tmp_path / "v")
    assert d.url.startswith("https://")

    bare = cli("token", "list", "--url", d.url, "--key", admin, "--ca-file", str(pki.ca))
    assert bare.returncode == 1
    assert "may require a client certificate" in bare.stderr, bare.stderr
    assert "--client-cert" in bare.stderr
    assert "Traceback" not in bare.stderr
    with pytest.raises(httpx.HTTPError):  # not our client: the handshake itself fails
        httpx.get(d.url + "/healthz", verify=ssl.create_default_context(cafile=pki.ca))

    stranger = make_pki(tmp_path / "other")  # a certificate of another CA
    wrong = cli("token", "list", "--url", d.url, "--key", admin, "--ca-file", str(pki.ca),
                "--client-cert", str(stranger.client_cert), "--client-key",
                str(stranger.client_key))
    assert wrong.returncode == 1
    assert "refused this client's certificate" in wrong.stderr, wrong.stderr
    good = cli("token", "list", "--url", d.url, "--key", admin, "--ca-file", str(pki.ca),
               "--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key))
    assert good.returncode == 0, good.stderr
    set_config(tmp_path / "v", port=int(d.url.rsplit(":", 1)[1]))  # for --dir only
    by_env = cli("token", "list", "--dir", str(tmp_path / "v"), env={
        "FOBLAB_CA_FILE": str(pki.ca), "FOBLAB_CLIENT_CERT": str(pki.client_cert),
        "FOBLAB_CLIENT_KEY": str(pki.client_key)})
    assert by_env.returncode == 0, by_env.stderr  # --dir: https:// from the config


def test_bad_tls_settings_are_one_line(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    init_dir(tmp_path / "v")
    cases = [
        (["--tls-cert", str(pki.cert)], "needs both tls_cert and tls_key"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(pki.client_key)], "cannot load"),
        (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki.key)],
         "no such file"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-client-ca",
          str(tmp_path / "pki" / "key.pem")], "cannot load the client CAs"),
    ]
    for args, words in cases:
        out = serve_once("--dir", str(tmp_path / "v"), "--port", "0", *args)
        assert out.returncode == 1, (args, out.stderr)
        assert words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def _served(url: str) -> x509.Certificate:
    """The certificate a new TLS connection to the daemon gets."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    return x509.load_pem_x509_certificate(
        ssl.get_server_certificate((host, int(port))).encode())


def test_a_reload_serves_a_renewed_certificate(tmp_path: Path, spawn: Any) -> None:
    """The certificate renewed in place (as certbot does), then SIGHUP: new connections get
    the new one, an open connection goes on, /metrics shows the new expiry. A renewal whose
    key does not match changes nothing."""
    pki = make_pki(tmp_path / "pki")
    admin, _ = init_dir(tmp_path / "v")
    cert, key = tmp_path / "v" / "cert.pem", tmp_path / "v" / "key.pem"
    cert.write_bytes(pki.cert.read_bytes())
    key.write_bytes(pki.key.read_bytes())
    d = spawn(tmp_path / "v", "--tls-cert", str(cert), "--tls-key", str(key))
    first = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    assert _served(d.url) == first
    trusted = ssl.create_default_context(cafile=pki.ca)
    with d.client("admin", verify=trusted) as http:
        expiry = metric(http.get("/metrics").text,
                        "foblab_tls_certificate_expiry_timestamp_seconds")
        assert expiry == first.not_valid_after_utc.timestamp()

        new_cert, new_key = renew(pki, tmp_path / "renewed", days=90)
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        renewed = x509.load_pem_x509_certificate(new_cert.read_bytes())
        mark = len(d.lines)
        d.proc.send_signal(signal.SIGHUP)
        wait_for_lines(d, "TLS certificate read again", mark)
        assert _served(d.url) == renewed
        # the connection made before the reload is still open and answers
        assert http.get("/healthz").status_code == 200
        assert metric(http.get("/metrics").text,
                      "foblab_tls_certificate_expiry_timestamp_seconds") == \
            renewed.not_valid_after_utc.timestamp()
        out = cli("reload", "--url", d.url, "--key", admin, "--ca-file", str(pki.ca))
        assert out.returncode == 0, out.stderr
        until = f"{renewed.not_valid_after_utc:%Y-%m-%dT%H:%M:%S}"
        assert f"TLS certificate: CN=127.0.0.1, valid until {until}" in out.stdout

        # a renewal gone wrong: the new certificate with the old key
        other_cert, _ = renew(pki, tmp_path / "broken", days=30)
        cert.write_bytes(other_cert.read_bytes())
        key.write_bytes(pki.key.read_bytes())
        r = http.post("/v1/admin/reload")
        assert r.status_code == 409 and r.json()["error"] == "reload_failed", r.text
        assert "nothing changed" in r.json()["message"]
        assert "TLS" in r.json()["message"] and "BEGIN" not in r.json()["message"]
        assert _served(d.url) == renewed  # still the renewed certificate, still serving
        assert http.get("/healthz").status_code == 200
    assert d.stop() == 0


def test_sighup_renews_the_certificate_of_every_worker(tmp_path: Path, spawn: Any) -> None:
    """`serve --workers 2`: SIGHUP to the parent reaches both workers, and every new
    connection, whichever worker takes it, gets the renewed certificate."""
    pki = make_pki(tmp_path / "pki")
    init_dir(tmp_path / "v")
    cert, key = tmp_path / "v" / "cert.pem", tmp_path / "v" / "key.pem"
    cert.write_bytes(pki.cert.read_bytes())
    key.write_bytes(pki.key.read_bytes())
    d = spawn(tmp_path / "v", "--workers", "2", "--tls-cert", str(cert), "--tls-key",
              str(key))
    new_cert, new_key = renew(pki, tmp_path / "renewed", days=90)
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_lines(d, "TLS certificate read again", mark, count=2)  # one per worker
    renewed = x509.load_pem_x509_certificate(new_cert.read_bytes())
    assert {_served(d.url).serial_number for _ in range(20)} == {renewed.serial_number}
    assert d.stop() == 0
