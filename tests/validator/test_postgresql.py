"""PostgreSQL as the validator's database: set-up by URL, migrate, copy both ways, and
what several processes on one database need (one winner per code, keys they share)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tools.validator_cmd import validator as validator_cli
from validator.config import CONFIG_NAME, ConfigError, load
from validator.core import Reason
from validator.logs import REQUEST_ID
from validator.otp import hotp
from validator.service import Validator
from validator.store import SCHEMA_VERSION, StoreError, open_store

T0 = 1_700_000_000.0
SEED = bytes.fromhex("8f1c2d3e4a5b6c7d8e9fa0b1c2d3e4f5a6b7c8d9")


def _enable(v: Validator, user: str, serial: str, t: float = T0) -> None:
    s = int(t // 30)
    v.enable(user, serial, hotp(SEED, s - 1), hotp(SEED, s), now=t)


def test_init_with_a_database_url_writes_it_and_env_overrides(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(validator_cli, ["init", str(tmp_path / "v"),
                                                "--database-url", pg_url, "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert "database" not in made  # no SQLite file was made
    assert not (tmp_path / "v" / "validator.db").exists()
    settings = load(tmp_path / "v" / CONFIG_NAME)
    assert settings.database_url == pg_url and settings.store_target == pg_url
    v = Validator.open(settings.store_target, settings.seed_key_file)
    assert v.store.data_keys()  # the first data key is in PostgreSQL
    v.register_token("TOK1", SEED, now=T0)
    v.close()
    checked = CliRunner().invoke(validator_cli, ["check", "--dir", str(tmp_path / "v"),
                                                 "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["opened"] == 1
    monkeypatch.setenv("FOBLAB_DATABASE_URL", "postgresql://elsewhere/db")
    assert load(tmp_path / "v" / CONFIG_NAME).database_url == "postgresql://elsewhere/db"
    monkeypatch.setenv("FOBLAB_DATABASE_URL", "mysql://nope")
    with pytest.raises(ConfigError, match="postgresql:// URL"):
        load(tmp_path / "v" / CONFIG_NAME)


def test_a_second_init_on_the_same_database_needs_its_seed_key(pg_url: str,
                                                               tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(validator_cli, ["init", str(tmp_path / "a"), "--database-url",
                                         pg_url]).exit_code == 0
    refused = runner.invoke(validator_cli, ["init", str(tmp_path / "b"), "--database-url",
                                            pg_url])
    assert refused.exit_code == 1 and "seed key file" in refused.output
    (tmp_path / "c").mkdir(mode=0o700)
    key = (tmp_path / "a" / "seed.key").read_bytes()
    (tmp_path / "c" / "seed.key").write_bytes(key)
    (tmp_path / "c" / "seed.key").chmod(0o600)
    result = runner.invoke(validator_cli, ["init", str(tmp_path / "c"), "--database-url",
                                           pg_url])
    assert result.exit_code == 0, result.output


def test_migrate_reports_and_upgrades(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    runner = CliRunner()
    result = runner.invoke(validator_cli, ["migrate", "--database", pg_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"from": 0, "to": SCHEMA_VERSION}
    with psycopg.connect(pg_url, autocommit=True) as conn:  # back to version 4
        conn.execute("DROP TABLE data_keys")
        conn.execute("ALTER TABLE audit DROP COLUMN request_id")  # schema 6's
        conn.execute("UPDATE schema_version SET version = 4")
    result = runner.invoke(validator_cli, ["migrate", "--database", pg_url, "--json"])
    assert json.loads(result.output) == {"from": 4, "to": SCHEMA_VERSION}
    store = open_store(pg_url)
    assert store.data_keys() == []
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        open_store(pg_url)
    refused = runner.invoke(validator_cli, ["migrate", "--database", pg_url])
    assert refused.exit_code == 1 and "newer" in refused.output


def test_copy_sqlite_to_postgresql_and_back(pg_url: str, tmp_path: Path) -> None:
    key = tmp_path / "seed.key"
    v = Validator.open(tmp_path / "a.db", key)
    token = REQUEST_ID.set("req-register")  # as inside a request: its audit row names it
    try:
        v.register_token("TOK1", SEED, now=T0)
    finally:
        REQUEST_ID.reset(token)
    v.register_token("TOK2", SEED[::-1], now=T0)
    _enable(v, "alice", "TOK1")
    v.rotate_key(now=T0 + 1)
    sealed = v.store.get("TOK1").sealed  # type: ignore[union-attr]
    audit = [(e.action, e.result, e.serial, e.request_id) for e in v.audit(limit=1000)]
    assert ("register", "ok", "TOK1", "req-register") in audit
    v.close()
    runner = CliRunner()
    result = runner.invoke(validator_cli, ["copy", "--from", str(tmp_path / "a.db"),
                                           "--to", pg_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"audit": len(audit), "data_keys": 1, "tokens": 2}
    again = runner.invoke(validator_cli, ["copy", "--from", str(tmp_path / "a.db"),
                                          "--to", pg_url])
    assert again.exit_code == 1 and "empty" in again.output
    pg = Validator.open(pg_url, key, create_key=False)
    assert pg.store.get("TOK1").sealed == sealed  # type: ignore[union-attr]  # as it was
    assert [(e.action, e.result, e.serial, e.request_id)
            for e in pg.audit(limit=1000)] == audit
    t = T0 + 60
    code = hotp(SEED, int(t // 30))
    assert pg.verify("alice", code, now=t).accepted
    pg.close()
    result = runner.invoke(validator_cli, ["copy", "--from", pg_url, "--to",
                                           str(tmp_path / "b.db")])
    assert result.exit_code == 0, result.output
    back = Validator.open(tmp_path / "b.db", key, create_key=False)
    assert back.verify("alice", code, now=t + 1).reason is Reason.REPLAYED  # state came too
    assert back.get_token("TOK1").user == "alice"
    back.close()


def test_two_validators_on_one_database_one_winner_per_code(pg_url: str,
                                                            tmp_path: Path) -> None:
    """Two validators (as two daemons would be), each with its own pool, 40 threads
    presenting one valid code: exactly one acceptance, in several rounds."""
    key = tmp_path / "seed.key"
    a = Validator.open(pg_url, key)
    b = Validator.open(pg_url, key, create_key=False)
    try:
        a.register_token("TOK1", SEED, now=T0)
        _enable(b, "alice", "TOK1")
        for round_ in range(1, 6):
            t = T0 + 30 * round_
            code = hotp(SEED, int(t // 30))
            barrier = threading.Barrier(40)
            results: list[bool] = []

            def go(v: Validator, code: str = code, t: float = t,
                   barrier: threading.Barrier = barrier,
                   results: list[bool] = results) -> None:
                barrier.wait()
                results.append(v.verify("alice", code, now=t).accepted)

            threads = [threading.Thread(target=go, args=(a if i % 2 else b,))
                       for i in range(40)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert sorted(results).count(True) == 1, (round_, results)
    finally:
        a.close()
        b.close()


def test_a_rotation_on_one_validator_while_the_other_registers_and_verifies(
        pg_url: str, tmp_path: Path) -> None:
    key = tmp_path / "seed.key"
    a = Validator.open(pg_url, key)
    b = Validator.open(pg_url, key, create_key=False)
    try:
        a.register_token("TOK1", SEED, now=T0)
        _enable(a, "alice", "TOK1")
        a.rotate_key(now=T0 + 1)  # b still seals under the first data key, dropped now
        b.register_token("TOK2", SEED, now=T0 + 2)  # resealed under the current one
        assert {k.hex() for k, _, cur in a.store.data_keys() if cur} == {b.box.data_key_id}
        t = T0 + 30
        assert b.verify("alice", hotp(SEED, int(t // 30)), now=t).accepted  # fetched key
        assert a.check_keys() is None and b.check_keys() is None
        a.rotate_key(now=T0 + 3, master=True)  # a new master key, in the key file
        b.close()  # the documented procedure: copy the new key file to b, restart b
        b = Validator.open(pg_url, key, create_key=False)
        assert b.check_keys() is None
    finally:
        a.close()
        b.close()


def test_a_connection_the_server_ended_is_replaced_before_use(pg_url: str,
                                                              monkeypatch) -> None:
    """The pool checks a connection it hands out with a round trip only when its socket
    has something to say (the server ended it) or it sat idle: a backend terminated right
    after its last use (a restart, a failover) still costs no request; a busy connection
    costs no extra round trip."""
    import psycopg
    import psycopg_pool

    from validator import store_pg

    checks: list[int] = []
    real = psycopg_pool.ConnectionPool.check_connection

    def counted(conn: psycopg.Connection) -> None:
        checks.append(1)
        real(conn)

    monkeypatch.setattr(psycopg_pool.ConnectionPool, "check_connection", staticmethod(counted))
    store = open_store(pg_url)
    assert isinstance(store, store_pg.PostgresStore)
    try:
        store.count_tokens()  # a new connection: checked once, then it is known
        checks.clear()
        for _ in range(20):
            store.count_tokens()
        assert checks == []  # used just now, nothing to read: no round trip
        with store._connection() as conn:
            pid = conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 10
            while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                (pid,)).fetchone()[0]:  # the backend has not yet exited
                assert time.monotonic() < deadline
                time.sleep(0.01)
        for _ in range(20):  # whichever pooled connection each gets: never StoreUnavailable
            assert store.count_tokens() == 0
        assert checks  # the dead one was checked (and replaced)
        for _ in range(5):
            with store._connection() as conn:
                assert conn.info.backend_pid != pid
        # and one idle for IDLE_CHECK_SECONDS is checked with a round trip
        monkeypatch.setattr(store_pg, "IDLE_CHECK_SECONDS", 0.0)
        checks.clear()
        store.count_tokens()
        assert checks == [1]
    finally:
        store.close()


def test_a_shared_write_caught_in_a_deadlock_loses_every_race_and_nothing_else(
        pg_url: str, tmp_path: Path) -> None:
    """`set_states` on two rows meets another session holding the second and then
    wanting the first: PostgreSQL undoes one of the two (here set_states, whose
    deadlock check comes first). Every change then reports a lost race, nothing of it is
    written, the store is not taken for down, and verify_many decides each request
    again and accepts both codes."""
    import psycopg

    from validator.service import VerifyRequest
    from validator.store import AuditEvent, Cas, StateChange

    v = Validator.open(pg_url, tmp_path / "seed.key")
    try:
        for user, serial in (("alice", "DL-A"), ("bob", "DL-B")):
            v.register_token(serial, SEED, now=T0)
            _enable(v, user, serial)
        before = {r.serial: r for r in v.store.list_tokens()}
        audit_before = v.store.count_audit()
        changes = [StateChange(s, before[s].version, before[s].state,
                               [AuditEvent(T0, "verify", "ok", serial=s)])
                   for s in ("DL-B", "DL-A")]
        got: list[object] = []
        with psycopg.connect(pg_url) as other:
            other.execute("SET deadlock_timeout = '20s'")  # its check comes second
            other.execute("UPDATE tokens SET version = version WHERE serial = 'DL-B'")
            writer = threading.Thread(target=lambda: got.append(v.store.set_states(changes)))
            writer.start()
            with psycopg.connect(pg_url, autocommit=True) as watch:
                deadline = time.monotonic() + 10
                while not watch.execute(  # set_states holds DL-A and waits for DL-B
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND query LIKE 'WITH v(serial%%'").fetchone()[0]:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            other.execute("UPDATE tokens SET version = version WHERE serial = 'DL-A'")
            writer.join(30)
            other.rollback()
        assert got == [[Cas.CONFLICT, Cas.CONFLICT]]
        assert {r.serial: r for r in v.store.list_tokens()} == before
        assert v.store.count_audit() == audit_before
        t = T0 + 30
        code = hotp(SEED, int(t // 30))
        out = v.verify_many([VerifyRequest("alice", code), VerifyRequest("bob", code)],
                            now=t)
        assert [r.accepted for r in out] == [True, True]  # type: ignore[union-attr]
    finally:
        v.close()


def test_a_validator_that_fails_to_open_leaves_no_connection(pg_url: str,
                                                             tmp_path: Path) -> None:
    """A setting refused after the store is open (here min_secret_bytes) closes the store:
    its pooled connections end at once, not whenever the garbage collector finds them (which
    psycopg_pool then reports as an error from one of its own threads)."""
    import psycopg

    Validator.open(pg_url, tmp_path / "seed.key").close()

    def others() -> int:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            return int(conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()").fetchone()[0])

    deadline = time.monotonic() + 10
    while others():  # the first validator's backends are gone
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(ValueError, match="min_secret_bytes") as refused:
        Validator.open(pg_url, tmp_path / "seed.key", min_secret_bytes=9)
    deadline = time.monotonic() + 10
    while others():
        assert time.monotonic() < deadline, "the refused validator's connections stay open"
        time.sleep(0.01)
    assert refused.value is not None  # (held until here, and with it its frames)


def test_a_verification_checks_one_connection_out_of_the_pool(pg_url: str,
                                                              tmp_path: Path) -> None:
    """A verification's read and write (and a batch's) share one pooled connection
    (`Store.pinned`): one checkout each, not one per statement. A connection the server
    ends while pinned is an unavailable store for that call alone."""
    import psycopg

    from validator.service import VerifyRequest
    from validator.store import StoreUnavailable

    v = Validator.open(pg_url, tmp_path / "seed.key")
    try:
        for n in range(6):
            v.register_token(f"PIN-{n}", SEED, kind="hotp", now=T0)
            v.enable(f"u{n}", f"PIN-{n}", hotp(SEED, 0), hotp(SEED, 1), now=T0)
        pool = v.store._pool  # type: ignore[attr-defined]

        def checkouts() -> int:
            return int(pool.get_stats().get("requests_num", 0))

        before = checkouts()
        assert v.verify("u0", hotp(SEED, 2), T0).accepted  # a read, then the write
        assert checkouts() - before == 1
        assert v.verify("u0", "000000", T0).reason is Reason.INVALID_CODE  # + the failure
        assert checkouts() - before == 2
        before = checkouts()
        results = v.verify_many([VerifyRequest(f"u{n}", hotp(SEED, 2)) for n in range(1, 6)]
                                + [VerifyRequest("u1", hotp(SEED, 3))], T0)
        assert [getattr(r, "accepted", r) for r in results] == [True] * 6
        assert checkouts() - before == 1  # the shared read and write, and u1's second alone
        with v.store.pinned():
            with v.store._connection() as conn:  # type: ignore[attr-defined]
                pid = conn.info.backend_pid
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(StoreUnavailable):
                for _ in range(50):  # until the backend has gone
                    v.store.count_tokens()
                    time.sleep(0.02)
        time.sleep(1.1)  # the store's probe waits a second after a failure
        assert v.store.count_tokens() == 6  # the next call has a working connection
    finally:
        v.close()
