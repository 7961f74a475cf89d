"""Signing-key rotation and API-key expiry and revocation (issue #13, part 5).

The plan-signing keyring (:mod:`keel.keys`): rotation keeps pending plans valid, a retired
key's plans neither get approved nor execute, a forged key id is refused, and no key material
reaches logs, audit rows or checkpoints. API keys (:mod:`keel.principals`): expiry on an
injected clock, revocation in force at once on every server of a database, the table's
migration, and ``keel keys`` (no secret printed; bad input exits 2).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import _own_database
from fastapi.testclient import TestClient
from langgraph.types import Command

from api.app import create_app
from cli.main import main as keel_main
from engine.approvals import validate_resume
from engine.runtime import Runtime
from guards.approvals import ApprovalError
from keel.config import Settings, get_settings
from keel.db import _DATABASES, open_database
from keel.errors import ConfigError
import keel.keys as keys_module
from keel.keys import (KeyEncryption, Keyring, KeyringError, RewrapReport, SigningKeyRetired, UnknownSigningKey,
                       configured_key_id, kek_id_of)
from keel.plan import Plan, PlanIntegrityError, SignedPlan, sign_plan, verify_plan
from keel.principals import PrincipalStore, hash_key, key_id_of
from support.review_helpers import keel_cli

DEMO = Path(__file__).resolve().parents[1] / "keel" / "demo"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CONFIGURED = "keys-test-configured-key-3f9a"
TICKETS = {t["id"]: t for t in map(json.loads, (DEMO / "tickets.jsonl").read_text().splitlines())}


@pytest.fixture()
def rt(tmp_path):
    runtime = Runtime(Settings(data_dir=tmp_path, now=NOW, plan_signing_key=CONFIGURED))
    runtime.ensure_fixtures()
    for user, role in (("req", "requester"), ("boss", "approver")):
        runtime.principals.upsert("acme", user, role)
    yield runtime
    runtime.close()


def run(rt, ticket_id, thread, **kw):
    cfg = {"configurable": {"thread_id": thread, "requester": "req"}}
    return rt.graph().invoke({"ticket": TICKETS[ticket_id]}, cfg, context=rt.context(), **kw), cfg


def approve(rt, state, cfg):
    req = state["__interrupt__"][0].value
    value = {"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "boss", "reason": "ok"}
    return rt.graph().invoke(Command(resume=value), cfg, context=rt.context())


def refunded(rt, order):
    return rt.backoffice.get_order("acme", order)["refunded_cents"]


def _plan(thread="th-1") -> Plan:
    return Plan(tenant="acme", customer_id="C-1", ticket_id="T-1", thread_id=thread, route="billing",
                policy_version="support-v1", actions=[])


# ------------------------------------------------------------------ the keyring, end to end
def test_rotation_signs_new_plans_with_the_new_id_and_old_pending_plans_still_execute(rt):
    waiting, cfg = run(rt, "T-8", "old")
    assert waiting["status"] == "awaiting_approval"
    assert waiting["plan"].key_id == configured_key_id(CONFIGURED.encode()) == rt.keyring.configured_id

    new = rt.keyring.rotate()
    assert new.key_id.startswith(f"k-{datetime.now(UTC):%Y%m%d}-") and new.state == "active"
    states = {k.key_id: k.state for k in rt.keyring.list()}
    assert states == {new.key_id: "active", rt.keyring.configured_id: "verify_only"}

    fresh, _ = run(rt, "T-1", "new")  # signed after the rotation: names the new key
    assert fresh["status"] == "completed" and fresh["plan"].key_id == new.key_id

    final = approve(rt, waiting, cfg)  # signed before it: still verifies, still executes
    assert final["status"] == "completed", final["reason_codes"]
    assert refunded(rt, "O-5002") == 8999


def test_a_retired_keys_pending_plan_is_neither_approved_nor_executed(rt):
    waiting, cfg = run(rt, "T-8", "doomed")
    old = waiting["plan"].key_id
    rt.keyring.rotate()
    rt.keyring.retire(old)

    # through keel's API and CLI: the approval itself is refused, the thread keeps waiting
    req = waiting["__interrupt__"][0].value
    with pytest.raises(ApprovalError) as e:
        validate_resume(rt, "doomed", rt.principals.get("acme", "boss"),
                        {"decision": "approve", "plan_hash": req["plan_hash"]})
    assert e.value.code == "signing_key_retired" and e.value.http_status == 409
    # a reject is still allowed (it does nothing)
    validate_resume(rt, "doomed", rt.principals.get("acme", "boss"), {"decision": "reject", "plan_hash": req["plan_hash"]})

    # a resume straight to the graph (langgraph dev, Studio): escalates, never executes
    final = approve(rt, waiting, cfg)
    assert final["status"] == "escalated"
    assert final["reason_codes"] == ["plan_integrity", "signing_key_retired"]
    assert refunded(rt, "O-5002") == 0 and rt.backoffice.count_rows("tool_ledger", "acme") == 0
    rows = rt.audit.list("acme", "doomed")
    assert not [r for r in rows if r.kind == "approval" and r.data.get("decision") == "approve"]
    assert [r.data["refused"] for r in rows if r.kind == "approval"] == ["signing_key_retired"]


def test_a_plan_whose_key_is_retired_between_approval_and_execute_does_not_execute(rt):
    """An auto-executing plan parked just before EXECUTE (a worker crash, say) while its key is retired."""
    parked, cfg = run(rt, "T-1", "parked", interrupt_before=["execute_action"])
    assert parked["plan"].key_id == rt.keyring.configured_id
    rt.keyring.rotate()
    rt.keyring.retire(rt.keyring.configured_id)
    final = rt.graph().invoke(None, cfg, context=rt.context())
    assert final["status"] == "escalated" and "signing_key_retired" in final["reason_codes"]
    assert refunded(rt, "O-5001") == 0
    refusal = [r.data for r in rt.audit.list("acme", "parked") if r.data.get("refused") == "plan_integrity"]
    assert refusal and "retired signing key " + rt.keyring.configured_id in refusal[0]["detail"]


@pytest.mark.parametrize("forge", ["other_valid_key", "unknown_key", "no_key_id"])
def test_a_tampered_key_id_is_refused_at_execution(rt, forge):
    waiting, cfg = run(rt, "T-8", f"forged-{forge}")
    newer = rt.keyring.rotate()
    plan = waiting["plan"].model_dump(mode="json")
    plan["key_id"] = {"other_valid_key": newer.key_id, "unknown_key": "k-20260101-deadbeef", "no_key_id": None}[forge]
    rt.graph().update_state(cfg, {"plan": plan})
    final = approve(rt, waiting, cfg)
    assert final["status"] == "escalated" and "plan_integrity" in final["reason_codes"]
    assert refunded(rt, "O-5002") == 0


def test_verify_uses_the_named_key_and_legacy_plans_use_the_configured_key(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'k.db'}")
    ring = Keyring(db, b"legacy-material").setup()
    legacy = sign_plan(_plan(), b"legacy-material")  # signed before keys had ids
    assert legacy.key_id is None and verify_plan(legacy, ring) is legacy
    first = sign_plan(_plan(), ring)
    assert first.key_id == ring.configured_id
    second_id = ring.rotate().key_id
    second = sign_plan(_plan(), ring)
    assert second.key_id == second_id and second.signature != first.signature
    for sp in (first, second, legacy):
        verify_plan(sp, ring)
    # the id is signed: naming the other key (or none) breaks the signature
    with pytest.raises(PlanIntegrityError):
        verify_plan(second.model_copy(update={"key_id": first.key_id}), ring)
    with pytest.raises(PlanIntegrityError):
        verify_plan(second.model_copy(update={"key_id": None}), ring)
    with pytest.raises(UnknownSigningKey):
        verify_plan(second.model_copy(update={"key_id": "k-nope"}), ring)
    ring.retire(ring.configured_id)
    for sp in (first, legacy):
        with pytest.raises(SigningKeyRetired):
            verify_plan(sp, ring)
    assert verify_plan(second, ring) is second
    with pytest.raises(KeyringError, match="active signing key"):
        ring.retire(second_id)
    db.close()


def test_the_signing_key_may_come_from_a_file(tmp_path):
    secret = tmp_path / "signing.secret"
    secret.write_text("from-a-mounted-file\n")
    settings = Settings(data_dir=tmp_path / "d", plan_signing_key_file=secret)
    assert settings.signing_key() == b"from-a-mounted-file"
    assert not (tmp_path / "d" / "signing.key").exists()  # nothing generated: the file is the key
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        Settings(data_dir=tmp_path, plan_signing_key_file=tmp_path / "empty").signing_key()
    with pytest.raises(ConfigError, match="cannot read"):
        Settings(data_dir=tmp_path, plan_signing_key_file=tmp_path / "missing").signing_key()


def test_no_key_material_in_logs_audit_or_checkpoints(rt, caplog):
    caplog.set_level(logging.DEBUG)
    rt.keyring.rotate()
    with rt.db.transaction() as tx:
        generated = {r["secret"] for r in tx.fetchall("SELECT secret FROM signing_keys WHERE secret IS NOT NULL")}
    assert len(generated) == 1
    waiting, cfg = run(rt, "T-8", "secrets")
    approve(rt, waiting, cfg)
    run(rt, "T-1", "secrets-2")
    materials = [CONFIGURED, *generated]
    logs = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    audit = json.dumps([r.model_dump(mode="json") for t in ("secrets", "secrets-2") for r in rt.audit.list("acme", t)])
    checkpoints = (rt.settings.data_dir / "checkpoints.db").read_bytes()
    with sqlite3.connect(rt.settings.data_dir / "checkpoints.db") as c:  # the WAL too, via a read
        checkpoints += b"".join(bytes(v) for (v,) in c.execute("SELECT checkpoint FROM checkpoints"))
    state = json.dumps(rt.graph().get_state(cfg).values, default=str)
    assert "key_id" in audit and rt.keyring.list()[0].key_id in audit  # ids are recorded ...
    for m in materials:  # ... the material never
        assert m not in logs and m not in audit and m not in state
        assert m.encode() not in checkpoints
    assert CONFIGURED not in repr(rt.keyring) and CONFIGURED not in repr(rt.context())


@pytest.fixture()
def fresh_pg_url():
    """A database of its own: rotating keys in the session's shared database would change what
    other tests' runtimes sign with."""
    yield from _own_database("keel_tkeys")


@pytest.mark.postgres
def test_two_runtimes_on_one_postgres_database_share_the_keyring(fresh_pg_url, tmp_path):
    """Rotation and retirement on one server are in force at once on another (no cache)."""
    a = Runtime(Settings(database_url=fresh_pg_url + "?application_name=keys_a", data_dir=tmp_path / "a", now=NOW,
                         plan_signing_key="pg-keys-shared"))
    b = Runtime(Settings(database_url=fresh_pg_url + "?application_name=keys_b", data_dir=tmp_path / "b", now=NOW,
                         plan_signing_key="pg-keys-shared"))
    try:
        assert a.db is not b.db
        signed_by_a = sign_plan(_plan("pg"), a.keyring)
        verify_plan(signed_by_a, b.keyring)
        rotated = b.keyring.rotate()
        assert sign_plan(_plan("pg2"), a.keyring).key_id == rotated.key_id  # a signs with b's new key
        b.keyring.retire(signed_by_a.key_id)
        with pytest.raises(SigningKeyRetired):
            verify_plan(signed_by_a, a.keyring)
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_servers_with_no_configured_key_on_postgres_share_one_generated_key(fresh_pg_url, tmp_path):
    """Each data dir generates its own configured key; on a shared database the ring starts
    with one generated key instead, so two such servers accept each other's plans at once."""
    a = Runtime(Settings(database_url=fresh_pg_url, data_dir=tmp_path / "a", now=NOW))
    b = Runtime(Settings(database_url=fresh_pg_url, data_dir=tmp_path / "b", now=NOW))
    try:
        assert a.keyring.configured_id != b.keyring.configured_id  # their own data-dir keys differ
        signed = sign_plan(_plan("shared"), a.keyring)
        assert signed.key_id == sign_plan(_plan("shared"), b.keyring).key_id
        assert not signed.key_id.startswith("k-cfg-")
        verify_plan(signed, b.keyring)
        generated = [k for k in a.keyring.list() if k.source == "generated"]
        assert len(generated) == 1  # made once, by whichever server set up first
    finally:
        a.close()
        b.close()


def test_servers_with_different_configured_keys_each_sign_with_their_own_until_a_rotation(tmp_path):
    """Before any rotation every server signs with its own configured key (keel's behaviour
    before the keyring); after one, all sign with the rotated key."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    db = open_database(url)
    a, b = Keyring(db, b"server-a-key").setup(), Keyring(db, b"server-b-key").setup()
    assert sign_plan(_plan(), a).key_id == a.configured_id != sign_plan(_plan(), b).key_id == b.configured_id
    assert {k.state for k in a.list()} == {"active"}
    rotated = a.rotate()
    assert sign_plan(_plan(), a).key_id == sign_plan(_plan(), b).key_id == rotated.key_id
    assert verify_plan(sign_plan(_plan(), b), a)
    c = Keyring(db, b"server-c-key").setup()  # a server started after the rotation: verify-only from the start
    assert {k.key_id: k.state for k in c.list()}[c.configured_id] == "verify_only"
    db.close()
    _DATABASES.pop(url, None)


# ------------------------------------------------------------------ key encryption (KEK)
KEK_A = "kek-test-alpha-7c1d90e2b54f8a36"
KEK_B = "kek-test-bravo-0e4a6b2d9f13c857"
KEK_C = "kek-test-charlie-5b8e2f04a91c6d37"


def _kek(current: str | None, *previous: str) -> KeyEncryption:
    return KeyEncryption(current.encode() if current else None, [p.encode() for p in previous])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def keys_db(request, tmp_path):
    """keel's database on either engine (Postgres: a database of its own, see ``fresh_pg_url``)."""
    url = request.getfixturevalue("fresh_pg_url") if request.param == "postgres" \
        else f"sqlite:///{tmp_path / 'kek.db'}"
    db = open_database(url)
    yield db
    db.close()
    _DATABASES.pop(url, None)


@pytest.fixture()
def warned(monkeypatch):
    """The once-per-process warning about unencrypted keys, as if this process had not given it yet."""
    monkeypatch.setattr(keys_module, "_warned_unencrypted", False)


def _row(db, key_id):
    return db.fetchone("SELECT * FROM signing_keys WHERE key_id = ?", (key_id,))


def _leaks(db, key_id, material: bytes, *, files: bool = True) -> list[str]:
    """Where the material shows in the key's row (as hex or as raw bytes), or in the SQLite files
    (``files``: not for a row rewrapped from cleartext, whose old version the file's free pages
    and WAL may still hold, as a backup taken before would: docs/operations.md says to rotate)."""
    row = _row(db, key_id)
    text = " ".join(str(v) for v in row.values())
    found = [f"row as {f}" for f, hit in (("hex", material.hex() in text.lower()),
                                            ("raw bytes", material in text.encode("utf-8", "surrogateescape")))
             if hit]
    if files and not db.is_postgres:
        path = Path(db.url.removeprefix("sqlite:///"))
        files = b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())
        found += [f"file as {f}" for f, hit in (("hex", material.hex().encode() in files), ("raw bytes", material in files))
                  if hit]
    return found


def test_the_database_never_holds_a_generated_keys_material_under_a_kek(keys_db, caplog, warned):
    caplog.set_level(logging.DEBUG)
    ring = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_A)).setup()
    kid = ring.rotate().key_id
    material = ring.verifying(kid)
    assert len(material) == 32 and _leaks(keys_db, kid, material) == []
    assert _row(keys_db, kid)["secret"].startswith(f"fernet:{kek_id_of(KEK_A.encode())}:")
    listed = {k.key_id: k for k in ring.list()}
    assert (listed[kid].encrypted, listed[kid].kek_id) == (True, kek_id_of(KEK_A.encode()))
    assert (listed[ring.configured_id].encrypted, listed[ring.configured_id].kek_id) == (False, None)
    signed = sign_plan(_plan(), ring)
    assert signed.key_id == kid and verify_plan(signed, ring) is signed
    # the negative control: without a KEK the same scan finds the material (so the scan can fail)
    plain = Keyring(keys_db, b"configured-kek-test").setup()
    clear_id = plain.rotate().key_id
    assert "row as hex" in _leaks(keys_db, clear_id, plain.verifying(clear_id))
    # no repr, log line or error carries the KEK or a key's material
    logs = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    for text in (logs, repr(ring), repr(_kek(KEK_A, KEK_B))):
        assert KEK_A not in text and KEK_B not in text and material.hex() not in text
    assert "stored unencrypted" in logs  # the cleartext key's warning


def test_plans_signed_before_a_kek_rotation_verify_after_rewrap(keys_db):
    old = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_A)).setup()
    kid = old.rotate().key_id
    material = old.verifying(kid)
    pending = sign_plan(_plan("before-kek-rotation"), old)
    # the operator's KEK rotation: B is current, A is listed as previous until the rewrap
    rotated = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_B, KEK_A))
    assert verify_plan(pending, rotated) is pending
    report = rotated.rewrap()
    assert report == RewrapReport(kek_id=kek_id_of(KEK_B.encode()), rewrapped={kek_id_of(KEK_A.encode()): 1},
                                  unchanged=0)
    assert _row(keys_db, kid)["secret"].startswith(f"fernet:{kek_id_of(KEK_B.encode())}:")
    assert _leaks(keys_db, kid, material) == []
    # A can go now: B alone decrypts every key
    after = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_B))
    assert verify_plan(pending, after) is pending and after.verifying(kid) == material
    assert sign_plan(_plan("after"), after).key_id == kid
    assert after.rewrap() == RewrapReport(kek_id=kek_id_of(KEK_B.encode()), rewrapped={}, unchanged=1)


def test_removing_the_old_kek_before_rewrap_fails_with_a_clear_error(keys_db):
    old = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_A)).setup()
    kid = old.rotate().key_id
    pending = sign_plan(_plan("stranded"), old)
    stored = _row(keys_db, kid)["secret"]
    early = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_B))  # A dropped before the rewrap
    a_id = kek_id_of(KEK_A.encode())
    for attempt in (lambda: verify_plan(pending, early), early.signing, early.rewrap):
        with pytest.raises(KeyringError, match=rf"{a_id}.*KEEL_KEY_ENCRYPTION_KEY.*KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS") as e:
            attempt()
        assert KEK_A not in str(e.value) and KEK_B not in str(e.value)
    assert _row(keys_db, kid)["secret"] == stored  # the failed rewrap changed nothing
    assert verify_plan(pending, Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_B, KEK_A))) is pending


def test_a_ciphertext_copied_onto_another_keys_row_does_not_decrypt_as_that_key(keys_db):
    """The key id is inside the token: a row's secret swapped for another key's (a retired key's
    material made to pass as the active one) is refused, not used."""
    ring = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_A)).setup()
    old, new = ring.rotate().key_id, ring.rotate().key_id
    keys_db.execute("UPDATE signing_keys SET secret = ? WHERE key_id = ?", (_row(keys_db, old)["secret"], new))
    with pytest.raises(KeyringError, match=f"signing key {new}: its stored material belongs to another key"):
        ring.verifying(new)
    keys_db.execute("UPDATE signing_keys SET secret = ? WHERE key_id = ?", (f"fernet:{kek_id_of(KEK_A.encode())}:x", new))
    with pytest.raises(KeyringError, match="does not decrypt"):
        ring.signing()


def test_cleartext_legacy_rows_still_verify_and_are_rewrapped(keys_db, caplog, warned):
    caplog.set_level(logging.WARNING, logger="keel.keys")
    legacy = Keyring(keys_db, b"configured-kek-test").setup()  # before keel had KEKs (or a dev without one)
    first, second = legacy.rotate().key_id, legacy.rotate().key_id
    assert [r.getMessage().count("stored unencrypted") for r in caplog.records] == [1]  # once per process
    assert _row(keys_db, first)["secret"] == legacy.verifying(first).hex()
    old_plan, new_plan = sign_plan(_plan("legacy"), legacy), None
    legacy.retire(first)  # a retired key is rewrapped too (it still may never verify)
    ring = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_A))
    assert verify_plan(old_plan, ring) is old_plan  # cleartext still reads with a KEK configured
    assert {k.key_id: k.encrypted for k in ring.list() if k.source == "generated"} == {first: False, second: False}
    material = {k: ring.verifying(k) for k in (second,)} | {first: bytes.fromhex(_row(keys_db, first)["secret"])}
    assert ring.rewrap() == RewrapReport(kek_id=kek_id_of(KEK_A.encode()), rewrapped={"cleartext": 2}, unchanged=0)
    for kid in (first, second):
        assert _leaks(keys_db, kid, material[kid], files=False) == []
    assert {k.key_id: k.kek_id for k in ring.list() if k.source == "generated"} == \
        {first: kek_id_of(KEK_A.encode()), second: kek_id_of(KEK_A.encode())}
    new_plan = sign_plan(_plan("legacy-2"), ring)
    for sp in (old_plan, new_plan):
        assert verify_plan(sp, ring) is sp
    with pytest.raises(SigningKeyRetired):
        ring.verifying(first)


def test_prod_without_a_kek_refuses_to_generate_a_key(keys_db, tmp_path):
    prod = Keyring(keys_db, b"configured-kek-test", require_encryption=True).setup()
    with pytest.raises(KeyringError, match="KEEL_ENV=prod.*KEEL_KEY_ENCRYPTION_KEY"):
        prod.rotate()
    assert [k.source for k in prod.list()] == ["configured"]  # nothing generated, nothing demoted
    assert {k.state for k in prod.list()} == {"active"}
    with pytest.raises(KeyringError, match="KEEL_ENV=prod"):  # the shared default key of a Postgres deployment
        Keyring(keys_db, b"other-configured", shared_default=True, require_encryption=True).setup()
    with_kek = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_A), require_encryption=True)
    assert with_kek.rotate().kek_id == kek_id_of(KEK_A.encode())
    # the runtime wires KEEL_ENV and the KEK settings into the ring
    rt = Runtime(Settings(data_dir=tmp_path / "prod", env="prod", plan_signing_key=CONFIGURED))
    try:
        with pytest.raises(KeyringError, match="KEEL_ENV=prod"):
            rt.keyring.rotate()
    finally:
        rt.close()
    rt = Runtime(Settings(data_dir=tmp_path / "prod", env="prod", plan_signing_key=CONFIGURED,
                          key_encryption_key=KEK_B, key_encryption_keys_previous=f"{KEK_A}, {KEK_C}"))
    try:
        assert rt.keyring.rotate().kek_id == kek_id_of(KEK_B.encode())
    finally:
        rt.close()


def test_the_kek_settings_come_from_the_environment_or_files(tmp_path):
    assert Settings(data_dir=tmp_path).key_encryption_keys() == (None, [])
    assert Settings(data_dir=tmp_path, key_encryption_key=KEK_A,
                    key_encryption_keys_previous=f" {KEK_B},{KEK_C} ,").key_encryption_keys() == \
        (KEK_A.encode(), [KEK_B.encode(), KEK_C.encode()])
    (tmp_path / "kek").write_text(KEK_A + "\n")
    (tmp_path / "previous").write_text(f"{KEK_B}\n{KEK_C}\n")
    from_files = Settings(data_dir=tmp_path, key_encryption_key_file=tmp_path / "kek",
                          key_encryption_keys_previous_file=tmp_path / "previous")
    assert from_files.key_encryption_keys() == (KEK_A.encode(), [KEK_B.encode(), KEK_C.encode()])
    assert KEK_A not in repr(Settings(data_dir=tmp_path, key_encryption_key=KEK_A))
    (tmp_path / "empty").write_text("\n")
    for kw, message in [({"key_encryption_key_file": tmp_path / "empty"}, "KEEL_KEY_ENCRYPTION_KEY_FILE: .* is empty"),
                        ({"key_encryption_key_file": tmp_path / "missing"}, "KEEL_KEY_ENCRYPTION_KEY_FILE: cannot read"),
                        ({"key_encryption_key": KEK_A, "key_encryption_keys_previous_file": tmp_path / "missing"},
                         "KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS_FILE: cannot read"),
                        ({"key_encryption_key": "short"}, "16 characters or more"),
                        ({"key_encryption_keys_previous": KEK_A}, "KEEL_KEY_ENCRYPTION_KEY is not")]:
        with pytest.raises(ConfigError, match=message) as e:
            Settings(data_dir=tmp_path, **kw).key_encryption_keys()
        assert KEK_A not in str(e.value) and "short" not in str(e.value).replace("shorter", "")
    # a KEK's id is a fingerprint: stable, distinct per KEK, and not the KEK
    assert kek_id_of(KEK_A.encode()) == kek_id_of(KEK_A.encode()) != kek_id_of(KEK_B.encode())
    assert re.fullmatch(r"kek-[0-9a-f]{12}", kek_id_of(KEK_A.encode()))


@pytest.mark.postgres
def test_servers_sharing_a_kek_on_postgres_share_the_generated_default_key_encrypted(fresh_pg_url, tmp_path):
    """The shared default key of servers with no configured key is stored under their common KEK."""
    a = Runtime(Settings(database_url=fresh_pg_url, data_dir=tmp_path / "a", now=NOW, key_encryption_key=KEK_A))
    b = Runtime(Settings(database_url=fresh_pg_url, data_dir=tmp_path / "b", now=NOW, key_encryption_key=KEK_A))
    try:
        signed = sign_plan(_plan("shared-kek"), a.keyring)
        verify_plan(signed, b.keyring)
        (generated,) = [k for k in b.keyring.list() if k.source == "generated"]
        assert generated.key_id == signed.key_id and generated.kek_id == kek_id_of(KEK_A.encode())
        assert _leaks(a.db, generated.key_id, a.keyring.verifying(generated.key_id)) == []
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ API keys
@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_api_key_expiry_on_an_injected_clock(engine, tmp_path, request):
    url = request.getfixturevalue("pg_url") + "?application_name=keys_expiry" if engine == "postgres" \
        else f"sqlite:///{tmp_path / 'p.db'}"
    db = open_database(url)
    now = [NOW]
    store = PrincipalStore(db, clock=lambda: now[0])
    store.setup()
    key = store.create_key(f"exp-{engine}", "eve", "requester", expires_in=timedelta(hours=1))
    forever = store.create_key(f"exp-{engine}", "fred", "requester")
    assert store.authenticate(key).user_id == "eve"
    now[0] = NOW + timedelta(minutes=59, seconds=59)
    assert store.authenticate(key) is not None
    now[0] = NOW + timedelta(hours=1)
    assert store.authenticate(key) is None and store.authenticate(forever).user_id == "fred"
    listed = {k.user_id: k for k in store.list_keys(f"exp-{engine}")}
    assert listed["eve"].expired and listed["eve"].expires_at.startswith("2026-11-25T13:00:00")
    assert not listed["fred"].expired and listed["fred"].expires_at is None
    with pytest.raises(ValueError):
        store.create_key(f"exp-{engine}", "eve", "requester", expires_in=timedelta(0))
    db.close()
    _DATABASES.pop(url, None)


def _old_api_keys_table(db):
    db.executescript("CREATE TABLE IF NOT EXISTS api_keys (key_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL,"
                     " user_id TEXT NOT NULL, role TEXT NOT NULL, created_at TEXT NOT NULL,"
                     " revoked INTEGER NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO api_keys (key_hash, tenant, user_id, role, created_at) VALUES (?, ?, ?, ?, ?)",
               (hash_key("keel_old-key"), "mig", "olga", "admin", NOW.isoformat()))


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_api_keys_table_is_migrated_in_place(engine, tmp_path, request):
    url = request.getfixturevalue("fresh_pg_url") if engine == "postgres" else f"sqlite:///{tmp_path / 'old.db'}"
    db = open_database(url)
    try:
        _old_api_keys_table(db)
        store = PrincipalStore(db)
        store.setup()
        store.setup()  # idempotent
        assert store.authenticate("keel_old-key").user_id == "olga"  # old keys keep working
        (old,) = store.list_keys("mig")
        assert old.expires_at is None and not old.revoked
        assert store.revoke(old.key_id) and store.authenticate("keel_old-key") is None
        assert store.list_keys("mig")[0].revoked_at is not None
    finally:
        db.close()
        _DATABASES.pop(url, None)


@pytest.mark.postgres
def test_a_key_revoked_on_one_server_is_refused_at_once_on_another(fresh_pg_url, tmp_path):
    a = Runtime(Settings(database_url=fresh_pg_url + "?application_name=keys_srv_a", data_dir=tmp_path / "a", now=NOW,
                         plan_signing_key="pg-keys-api"))
    b = Runtime(Settings(database_url=fresh_pg_url + "?application_name=keys_srv_b", data_dir=tmp_path / "b", now=NOW,
                         plan_signing_key="pg-keys-api"))
    try:
        key = a.principals.create_key("revoke-t", "rita", "requester")
        other = a.principals.create_key("revoke-t", "ron", "requester")
        with TestClient(create_app(a, embedded_worker=False)) as ca, \
                TestClient(create_app(b, embedded_worker=False)) as cb:
            for c in (ca, cb):  # both servers have seen (and could have cached) the key
                assert c.post("/assistants/search", json={}, headers={"x-api-key": key}).status_code == 200
            assert a.principals.revoke(key_id_of(hash_key(key)))
            assert cb.post("/assistants/search", json={}, headers={"x-api-key": key}).status_code == 401
            assert ca.post("/assistants/search", json={}, headers={"x-api-key": key}).status_code == 401
            assert cb.post("/assistants/search", json={}, headers={"x-api-key": other}).status_code == 200
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ keel keys
@pytest.fixture()
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("KEEL_PLAN_SIGNING_KEY", CONFIGURED)
    monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield keel_main
    get_settings.cache_clear()


def test_keys_list_prints_no_secret_and_revoke_takes_an_id(cli_env, capsys):
    main = cli_env
    assert main(["keys", "create", "--tenant", "acme", "--role", "approver", "--user", "bob", "--expires-in", "30d"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("keel_")
    assert main(["keys", "list"]) == 0
    table = capsys.readouterr().out
    assert main(["keys", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    for text in (table, json.dumps(listed)):
        assert key not in text and key[5:20] not in text and hash_key(key) not in text
    assert listed["key_id"] == key_id_of(hash_key(key)) and listed["key_id"] in table
    assert (listed["tenant"], listed["user_id"], listed["role"], listed["revoked"]) == ("acme", "bob", "approver", False)
    created = datetime.fromisoformat(listed["created_at"])
    assert datetime.fromisoformat(listed["expires_at"]) - created == timedelta(days=30)
    assert main(["keys", "revoke", listed["key_id"]]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked"] is True


def test_keys_rotate_and_retire_signing_from_the_cli(cli_env, capsys):
    main = cli_env
    assert main(["keys", "rotate-signing"]) == 0
    out = capsys.readouterr().out
    assert main(["keys", "list-signing", "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)
    active = [k["key_id"] for k in keys if k["state"] == "active"]
    assert len(active) == 1 and active[0] in out
    assert {k["state"] for k in keys if k["key_id"] != active[0]} == {"verify_only"}
    assert all("secret" not in k for k in keys)
    old = next(k["key_id"] for k in keys if k["state"] == "verify_only")
    assert main(["keys", "retire-signing", old]) == 0
    capsys.readouterr()
    assert main(["keys", "list-signing", "--json"]) == 0
    assert {k["key_id"]: k["state"] for k in json.loads(capsys.readouterr().out)}[old] == "retired"


def test_keys_rotate_list_and_rewrap_signing_under_a_kek_from_the_cli(cli_env, monkeypatch, capsys):
    a_id, b_id = kek_id_of(KEK_A.encode()), kek_id_of(KEK_B.encode())
    code, out, err = keel_cli(["keys", "rotate-signing"], monkeypatch, {"KEEL_KEY_ENCRYPTION_KEY": KEK_A}, capsys)
    assert code == 0 and f"encrypted under {a_id}" in out
    code, out, _ = keel_cli(["keys", "list-signing"], monkeypatch, {}, capsys)
    assert code == 0 and f"encrypted under {a_id}" in out and "not stored (configured)" in out
    code, out, _ = keel_cli(["keys", "list-signing", "--json"], monkeypatch, {}, capsys)
    assert {(k["source"], k["encrypted"], k["kek_id"]) for k in json.loads(out)} == \
        {("generated", True, a_id), ("configured", False, None)}
    # the KEK rotated: B current, A previous, then the rewrap
    env = {"KEEL_KEY_ENCRYPTION_KEY": KEK_B, "KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS": KEK_A}
    code, out, err = keel_cli(["keys", "rewrap-signing"], monkeypatch, env, capsys)
    assert code == 0, err
    assert f"rewrapped 1 plan-signing key(s) under {b_id} (1 from {a_id}); 0 already under it" in out
    monkeypatch.delenv("KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS")
    code, out, _ = keel_cli(["keys", "rewrap-signing", "--json"], monkeypatch, {}, capsys)
    assert code == 0 and json.loads(out) == {"kek_id": b_id, "rewrapped": {}, "unchanged": 1}
    code, out, _ = keel_cli(["keys", "list-signing"], monkeypatch, {}, capsys)
    assert f"encrypted under {b_id}" in out and a_id not in out
    # a KEK that is not the one the keys are under: a clear refusal, no stack trace, nothing printed
    code, out, err = keel_cli(["keys", "rewrap-signing"], monkeypatch, {"KEEL_KEY_ENCRYPTION_KEY": KEK_C}, capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"key-encryption key {b_id}, which is not configured" in err and "KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS" in err
    for secret in (KEK_A, KEK_B, KEK_C):
        assert secret not in err


def test_keys_signing_commands_without_a_kek_from_the_cli(cli_env, monkeypatch, capsys, warned):
    code, out, err = keel_cli(["keys", "rotate-signing"], monkeypatch, {}, capsys)  # dev: works, says so
    assert code == 0 and "stored UNENCRYPTED" in out
    code, out, err = keel_cli(["keys", "rewrap-signing"], monkeypatch, {}, capsys)
    assert code == 2 and "no key-encryption key is configured" in err and "Traceback" not in err
    code, out, err = keel_cli(["keys", "rotate-signing"], monkeypatch, {"KEEL_ENV": "prod"}, capsys)
    assert code == 2 and out == "" and "KEEL_ENV=prod: refusing" in err and "Traceback" not in err
    code, out, err = keel_cli(["keys", "rewrap-signing"], monkeypatch, {"KEEL_KEY_ENCRYPTION_KEY": KEK_A}, capsys)
    assert code == 0 and "(1 from cleartext)" in out  # the dev key, encrypted now
    code, out, err = keel_cli(["keys", "rotate-signing"], monkeypatch, {}, capsys)  # prod, with a KEK
    assert code == 0 and f"encrypted under {kek_id_of(KEK_A.encode())}" in out
    code, out, err = keel_cli(["keys", "list-signing"], monkeypatch, {"KEEL_KEY_ENCRYPTION_KEY": "short"}, capsys)
    assert code == 2 and "16 characters or more" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["keys", "create", "--tenant", "acme", "--role", "requester", "--user", "u", "--expires-in", "soon"], "duration"),
    (["keys", "create", "--tenant", "acme", "--role", "requester", "--user", "u", "--expires-in", "0d"], "duration"),
    (["keys", "create", "--tenant", "acme", "--role", "root", "--user", "u"], "invalid choice"),
    (["keys", "revoke", "keel_no-such-key"], "no such key"),
    (["keys", "revoke", "0123456789abcdef"], "no such key"),
    (["keys", "retire-signing", "k-20990101-00000000"], "no signing key"),
    (["keys", "retire-signing", "ACTIVE"], "rotate-signing"),
])
def test_keys_bad_input_exits_2_with_a_message(cli_env, capsys, argv, message):
    main = cli_env
    if "ACTIVE" in argv:
        argv = [*argv[:-1], configured_key_id(CONFIGURED.encode())]  # the only key: active
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_a_signed_plan_round_trips_its_key_id():
    sp = SignedPlan(plan=_plan(), hash="h", signature="s", key_id="k-1")
    assert SignedPlan.model_validate(sp.model_dump(mode="json")).key_id == "k-1"
    assert SignedPlan.model_validate({k: v for k, v in sp.model_dump().items() if k != "key_id"}).key_id is None


def test_approving_a_plan_whose_key_this_server_cannot_decrypt_is_a_clear_503(keys_db):
    """A server missing the KEK a key was stored under refuses the approval with the keyring's
    message (HTTP 503: retry once the KEK is configured), not an internal error."""
    from types import SimpleNamespace

    from engine.approvals import _refuse_untrusted_key
    from guards.approvals import ApprovalError

    ring = Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_A)).setup()
    ring.rotate()
    pending = sign_plan(_plan("waiting"), ring)
    stranded = SimpleNamespace(keyring=Keyring(keys_db, b"configured-kek-test", kek=_kek(KEK_B)))
    with pytest.raises(ApprovalError) as e:
        _refuse_untrusted_key(stranded, pending)  # type: ignore[arg-type]
    assert (e.value.code, e.value.http_status) == ("keyring_unavailable", 503)
    assert "KEEL_KEY_ENCRYPTION_KEY" in e.value.message and KEK_A not in e.value.message
    _refuse_untrusted_key(SimpleNamespace(keyring=ring), pending)  # type: ignore[arg-type]  # the right KEK: no refusal
