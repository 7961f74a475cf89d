"""The back office on SQLite and on Postgres: schema, loading, tenant scoping, read shapes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from keel.db import Database, IntegrityError
from tools.backoffice import TABLES, BackOffice
from tools.fixtures import Fixtures, demo_fixtures


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def bo(request: pytest.FixtureRequest, tmp_path) -> Iterator[BackOffice]:
    url = f"sqlite:///{tmp_path}/bo.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    db = Database(url)
    backoffice = BackOffice(db)
    backoffice.setup()
    yield backoffice
    db.close()


@pytest.fixture
def fixtures() -> Fixtures:
    return demo_fixtures().model_copy(update={"tenant": f"t-{secrets.token_hex(4)}"})


def test_setup_is_idempotent(bo: BackOffice) -> None:
    bo.setup()
    bo.setup()
    assert all(bo.count_rows(t, "nobody") == 0 for t in TABLES)


def test_load_fixtures_and_counts(bo: BackOffice, fixtures: Fixtures) -> None:
    t = fixtures.tenant
    assert not bo.has_tenant(t)
    bo.load_fixtures(fixtures)
    assert bo.has_tenant(t)
    counts = {table: bo.count_rows(table, t) for table in TABLES}
    assert counts == {
        "customers": 12, "orders": 20, "subscriptions": 5, "payments": 20, "refunds": 0,
        "reships": 0, "password_resets": 0, "articles": 8, "tool_ledger": 0,
    }
    bo.load_fixtures(fixtures)  # replaces, never duplicates
    assert bo.count_rows("orders", t) == 20


def test_reads_are_shaped_like_fixture_records(bo: BackOffice, fixtures: Fixtures) -> None:
    t = fixtures.tenant
    bo.load_fixtures(fixtures)
    for order in fixtures.orders:
        assert bo.get_order(t, order.id) == order.model_dump(mode="json")
    for customer in fixtures.customers:
        assert bo.get_customer(t, customer.id) == customer.model_dump(mode="json")
    assert bo.get_order(t, "O-5001")["delivered_at"] == "2026-11-05T15:00:00Z"
    assert bo.get_order(t, "O-5008")["delivered_at"] is None
    assert [o["id"] for o in bo.list_orders(t, "C-1001")] == ["O-5001", "O-5016", "O-5010"]
    assert bo.list_subscriptions(t, "C-1001") == [fixtures.subscriptions[0].model_dump(mode="json")]
    assert bo.get_subscription(t, "S-9002")["customer_id"] == "C-1006"
    assert bo.get_account(t, "C-1004") == {
        "customer_id": "C-1004", "email": "dana.okafor@example.com", "identity_level": 1,
        "locked": True, "mfa_enabled": False,
    }
    payments = bo.list_payments(t, "C-1011")
    assert [(p["order_id"], p["amount_cents"], p["refunded_cents"], p["status"]) for p in payments] == [
        ("O-5005", 20000, 5000, "captured"),
        ("O-5012", 6400, 0, "captured"),
    ]
    assert [p["order_id"] for p in bo.list_payments(t, "C-1011", "O-5012")] == ["O-5012"]
    assert [a["id"] for a in bo.articles(t)] == [f"KB-{i}" for i in range(1, 9)]
    assert bo.get_order(t, "O-404") is None and bo.get_customer(t, "C-404") is None


def test_tenants_are_isolated(bo: BackOffice, fixtures: Fixtures) -> None:
    other = fixtures.model_copy(update={"tenant": fixtures.tenant + "-other", "orders": fixtures.orders[:1]})
    bo.load_fixtures(fixtures)
    bo.load_fixtures(other)
    assert bo.count_rows("orders", fixtures.tenant) == 20
    assert bo.count_rows("orders", other.tenant) == 1
    assert bo.get_order(other.tenant, "O-5002") is None
    assert bo.get_order(fixtures.tenant, "O-5002") is not None
    bo.load_fixtures(other.model_copy(update={"orders": []}))  # reloading one tenant leaves the other alone
    assert bo.count_rows("orders", fixtures.tenant) == 20


def test_load_is_one_transaction(bo: BackOffice, fixtures: Fixtures) -> None:
    bo.load_fixtures(fixtures)
    broken = fixtures.model_construct(  # skips validation: a duplicate id the database refuses
        tenant=fixtures.tenant, customers=fixtures.customers[:1] * 2, orders=[], subscriptions=[], articles=[]
    )
    with pytest.raises(IntegrityError):
        bo.load_fixtures(broken)
    assert bo.count_rows("orders", fixtures.tenant) == 20  # the delete was rolled back too
    assert bo.count_rows("customers", fixtures.tenant) == 12


def test_count_rows_refuses_unknown_tables(bo: BackOffice) -> None:
    with pytest.raises(ValueError):
        bo.count_rows("orders; DROP TABLE orders", "t")
