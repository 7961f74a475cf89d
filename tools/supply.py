"""The supply-chain workflow's back office and tools, declared once, here.

The records of ``workflows/supply/fixtures.json`` (accounts, purchase orders, shipments,
inventory, suppliers, carriers, notices, claims) are kept per tenant in one table of JSON
documents, on keel's own database: a tool's write and its idempotency-ledger row commit in
the same transaction (the runner's :class:`~tools.runner.ToolRunner` with
``registry=SUPPLY_TOOLS``). Each tool is declared once with :func:`tools.declaration.tool`
(input and output models, side effect, what VERIFY re-reads, a reviewer's preview), in
this module rather than ``tools/catalog`` so that support's registry never serves them. Every query filters on the tenant;
a record of another account is refused (``not_owner``), a missing one is ``not_found``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, ValidationError

from keel.db import Database, Tx
from keel.types import StrictModel

from .backoffice import iso_z
from .contracts import RecordId, ToolEnv, ToolError, ToolInput
from .declaration import RecordChange, ToolDecl, Verify, tool

__all__ = ["SupplyFixtures", "SupplyStore", "SUPPLY_TOOLS", "parse_supply_fixtures", "KINDS"]

KINDS = ("account", "purchase_order", "shipment", "inventory", "supplier", "carrier", "notice", "claim",
         "reroute", "substitution", "pending")
"""Record kinds in ``supply_records``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS supply_records (
  tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, account_id TEXT, data TEXT NOT NULL,
  PRIMARY KEY (tenant, kind, id));
CREATE TABLE IF NOT EXISTS tool_ledger (
  idempotency_key TEXT PRIMARY KEY, tenant TEXT NOT NULL, tool TEXT NOT NULL,
  args_hash TEXT NOT NULL, result_json TEXT NOT NULL, created_at TEXT NOT NULL)
"""


class SupplyFixtures(StrictModel):
    """A tenant's supply back office as loaded from a fixtures file (records kept as given)."""

    tenant: str = Field(min_length=1, max_length=64)
    accounts: list[dict[str, Any]]
    warehouses: list[dict[str, Any]] = Field(default_factory=list)
    skus: list[dict[str, Any]] = Field(default_factory=list)
    purchase_orders: list[dict[str, Any]]
    shipments: list[dict[str, Any]]
    inventory: list[dict[str, Any]]
    suppliers: list[dict[str, Any]]
    carriers: list[dict[str, Any]]
    notices: list[dict[str, Any]] = Field(default_factory=list)
    claims: list[dict[str, Any]] = Field(default_factory=list)


def parse_supply_fixtures(text: str) -> SupplyFixtures:
    """Validate a fixtures file's text; raises ``ValueError`` with the fields named."""
    try:
        return SupplyFixtures.model_validate_json(text)
    except ValidationError as e:
        fields = sorted({".".join(str(p) for p in err["loc"][:2]) or "fixtures" for err in e.errors()})
        raise ValueError(f"invalid supply fixtures: {', '.join(fields[:5])}") from None


def _inventory_id(row: dict[str, Any]) -> str:
    return f"{row['sku']}@{row['warehouse_id']}"


class SupplyStore:
    """The supply back office of every tenant on one database (reads return plain dicts)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> None:
        """Create the table (idempotent)."""
        self.db.executescript(_SCHEMA)

    def has_tenant(self, tenant: str) -> bool:
        """Whether the tenant's records are loaded."""
        return self.db.fetchone("SELECT 1 AS x FROM supply_records WHERE tenant = ? LIMIT 1", (tenant,)) is not None

    def load_fixtures(self, fx: SupplyFixtures) -> None:
        """Replace the tenant's records with ``fx``'s."""
        rows: list[tuple[str, str, str | None, dict[str, Any]]] = []
        for kind, items in (("account", fx.accounts), ("purchase_order", fx.purchase_orders),
                            ("shipment", fx.shipments), ("supplier", fx.suppliers), ("carrier", fx.carriers),
                            ("notice", fx.notices), ("claim", fx.claims)):
            rows += [(kind, str(r["id"]), r.get("account_id"), r) for r in items]
        rows += [("inventory", _inventory_id(r), None, r) for r in fx.inventory]
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM supply_records WHERE tenant = ?", (fx.tenant,))
            for kind, rid, account, data in rows:
                _put(tx, fx.tenant, kind, rid, account, data)

    def hold(self, tenant: str, thread_id: str, plan_hash: str, items: list[dict[str, Any]]) -> None:
        """Record a plan's notices and claims as pending while it waits for approval: the
        pack's ``count_pending`` rules count them as sent or filed for every other run."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM supply_records WHERE tenant = ? AND kind = 'pending' AND account_id = ?",
                       (tenant, thread_id))
            for i, item in enumerate(items):
                _put(tx, tenant, "pending", f"{thread_id}:{plan_hash[:12]}:{i}", thread_id,
                     {**item, "thread_id": thread_id, "plan_hash": plan_hash})

    def release(self, tenant: str, thread_id: str) -> None:
        """Drop a run's pending holds (its plan was rejected, escalated or has executed)."""
        self.db.execute("DELETE FROM supply_records WHERE tenant = ? AND kind = 'pending' AND account_id = ?",
                        (tenant, thread_id))

    def get(self, tenant: str, kind: str, rid: str, tx: Tx | None = None) -> dict[str, Any] | None:
        """One record, or None."""
        sql, args = "SELECT data FROM supply_records WHERE tenant = ? AND kind = ? AND id = ?", (tenant, kind, rid)
        row = tx.fetchone(sql, args) if tx is not None else self.db.fetchone(sql, args)
        return json.loads(row["data"]) if row else None

    def all(self, tenant: str, kind: str, tx: Tx | None = None) -> list[dict[str, Any]]:
        """Every record of a kind, by id."""
        sql, args = "SELECT data FROM supply_records WHERE tenant = ? AND kind = ? ORDER BY id", (tenant, kind)
        if tx is not None:
            return [json.loads(r["data"]) for r in tx.fetchall(sql, args)]
        with self.db.transaction() as t:
            return [json.loads(r["data"]) for r in t.fetchall(sql, args)]


def _put(tx: Tx, tenant: str, kind: str, rid: str, account: str | None, data: dict[str, Any]) -> None:
    tx.execute("DELETE FROM supply_records WHERE tenant = ? AND kind = ? AND id = ?", (tenant, kind, rid))
    tx.execute("INSERT INTO supply_records (tenant, kind, id, account_id, data) VALUES (?, ?, ?, ?, ?)",
               (tenant, kind, rid, account, json.dumps(data, sort_keys=True)))


def _owned(store: SupplyStore, tx: Tx, env: ToolEnv, kind: str, rid: str) -> dict[str, Any]:
    row = store.get(env.tenant, kind, rid, tx)
    if row is None:
        raise ToolError("not_found", f"no {kind} {rid}")
    if row.get("account_id") != env.customer_id:
        raise ToolError("not_owner", f"{kind} {rid} belongs to another account")
    return row


def _new_id(prefix: str, env: ToolEnv) -> str:
    return f"{prefix}-" + hashlib.sha256(str(env.idempotency_key).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- contracts
class ShipmentRef(ToolInput):
    """Read one shipment of the account: status, carrier, promised date, ETA."""

    shipment_id: RecordId


class PurchaseOrderRef(ToolInput):
    """Read one purchase order of the account: its lines, quantities and unit prices."""

    po_id: RecordId


class SkuRef(ToolInput):
    """Read a sku's units per warehouse (tenant-wide, no owner)."""

    sku: RecordId


class SupplierQuery(ToolInput):
    """List the approved suppliers that carry a sku, with unit price and lead time."""

    sku: RecordId


class RerouteShipmentInput(ToolInput):
    """Reroute a shipment with one of its carrier's reroute options, at the quoted cost."""

    shipment_id: RecordId
    option_id: RecordId
    amount_cents: int = Field(ge=0)


class SubstituteSupplierInput(ToolInput):
    """Order a PO line's missing units from another approved supplier at its listed price."""

    po_id: RecordId
    sku: RecordId
    supplier_id: RecordId
    qty: int = Field(ge=1)
    unit_price_cents: int = Field(ge=0)
    amount_cents: int = Field(ge=0)


class NotifyCustomerInput(ToolInput):
    """Send the account a templated notice about a PO, to its email on file (no recipient argument)."""

    po_id: RecordId
    template: Literal["delay_notice", "substitution_notice", "loss_notice"]


class OpenCarrierClaimInput(ToolInput):
    """File a claim against the shipment's carrier for an amount."""

    shipment_id: RecordId
    amount_cents: int = Field(ge=1)


class RecordOutput(StrictModel):
    """A record as stored (reads)."""

    record: dict[str, Any]


class RecordsOutput(StrictModel):
    """Several records (reads)."""

    records: list[dict[str, Any]]


class WriteOutput(StrictModel):
    """What a side effect wrote: the new record's kind and id, and the record."""

    kind: str
    id: str
    record: dict[str, Any]


# ---------------------------------------------------------------- reads
@tool(side_effect=False, routes=("delay", "claims"))
def get_shipment(store: SupplyStore, tx: Tx, env: ToolEnv, args: ShipmentRef) -> RecordOutput:
    """One of the account's shipments."""
    return RecordOutput(record=_owned(store, tx, env, "shipment", args.shipment_id))


@tool(side_effect=False, routes=("delay", "stock", "claims"))
def get_purchase_order(store: SupplyStore, tx: Tx, env: ToolEnv, args: PurchaseOrderRef) -> RecordOutput:
    """One of the account's purchase orders."""
    return RecordOutput(record=_owned(store, tx, env, "purchase_order", args.po_id))


@tool(side_effect=False, routes=("stock",))
def get_inventory(store: SupplyStore, tx: Tx, env: ToolEnv, args: SkuRef) -> RecordsOutput:
    """A sku's inventory rows (on hand, reserved) in every warehouse."""
    return RecordsOutput(records=[r for r in store.all(env.tenant, "inventory", tx) if r.get("sku") == args.sku])


@tool(side_effect=False, routes=("stock",))
def list_suppliers(store: SupplyStore, tx: Tx, env: ToolEnv, args: SupplierQuery) -> RecordsOutput:
    """The approved suppliers listing a sku."""
    out = []
    for s in store.all(env.tenant, "supplier", tx):
        listed = next((x for x in s.get("skus") or [] if x.get("sku") == args.sku), None)
        if s.get("approved") and listed is not None:
            out.append({"supplier_id": s["id"], "name": s.get("name"), **listed})
    return RecordsOutput(records=out)


# ---------------------------------------------------------------- side effects
def _reroute_preview(store: SupplyStore, tenant: str, args: RerouteShipmentInput) -> list[RecordChange]:
    sh = store.get(tenant, "shipment", args.shipment_id)
    return [RecordChange.of("shipment", sh, reroute_option=args.option_id, reroute_cost_cents=args.amount_cents)]


def _reroute_read(store: SupplyStore, tenant: str, args: RerouteShipmentInput) -> dict[str, Any] | None:
    return store.get(tenant, "shipment", args.shipment_id)


@tool(side_effect=True, operation="reroute", routes=("delay",), preview=_reroute_preview,
      verify=Verify(read=_reroute_read, holds=lambda rec, args, out: rec.get("rerouted_by") == out.id))
def reroute_shipment(store: SupplyStore, tx: Tx, env: ToolEnv, args: RerouteShipmentInput) -> WriteOutput:
    """Reroute the shipment; the cost must be the carrier's quote."""
    sh = _owned(store, tx, env, "shipment", args.shipment_id)
    carrier = store.get(env.tenant, "carrier", str(sh.get("carrier_id")), tx) or {}
    option = next((o for o in carrier.get("reroute_options") or [] if o.get("id") == args.option_id), None)
    if option is None:
        raise ToolError("not_offered", "the carrier offers no such option")
    if option["cost_cents"] != args.amount_cents:
        raise ToolError("invalid_arguments", "amount_cents is not the carrier's quote")
    rid = _new_id("RR", env)
    record = {"id": rid, "shipment_id": sh["id"], "account_id": env.customer_id, "option_id": args.option_id,
              "cost_cents": args.amount_cents, "at": iso_z(env.now)}
    _put(tx, env.tenant, "reroute", rid, env.customer_id, record)
    updated = {**sh, "carrier_id": option.get("to_carrier") or sh.get("carrier_id"),
               "service": option.get("to_service") or sh.get("service"),
               "origin_warehouse": option.get("from_warehouse") or sh.get("origin_warehouse"), "rerouted_by": rid}
    _put(tx, env.tenant, "shipment", sh["id"], sh.get("account_id"), updated)
    return WriteOutput(kind="reroute", id=rid, record=record)


def _substitution_preview(store: SupplyStore, tenant: str, args: SubstituteSupplierInput) -> list[RecordChange]:
    return [RecordChange.new("substitution", **args.model_dump(), status="inbound")]


def _created_preview(kind: str) -> Any:
    def preview(store: SupplyStore, tenant: str, args: Any) -> list[RecordChange]:
        return [RecordChange.new(kind, **args.model_dump())]

    return preview


def _latest(kind: str, key: str) -> Any:
    """VERIFY's read for a tool that creates a record: the newest one of its kind for ``key``."""

    def read(store: SupplyStore, tenant: str, args: Any) -> dict[str, Any] | None:
        rows = [r for r in store.all(tenant, kind) if r.get(key) == getattr(args, key)]
        return rows[-1] if rows else None

    return read


@tool(side_effect=True, operation="substitute", routes=("stock",), preview=_substitution_preview,
      verify=Verify(read=_latest("substitution", "po_id"), holds=lambda rec, args, out: rec.get("qty") == args.qty))
def substitute_supplier(store: SupplyStore, tx: Tx, env: ToolEnv, args: SubstituteSupplierInput) -> WriteOutput:
    """Record an inbound order of the shortfall with the other supplier."""
    _owned(store, tx, env, "purchase_order", args.po_id)
    supplier = store.get(env.tenant, "supplier", args.supplier_id, tx)
    if supplier is None or not supplier.get("approved"):
        raise ToolError("supplier_not_approved", "the supplier is not approved")
    rid = _new_id("SB", env)
    record = {"id": rid, **args.model_dump(), "account_id": env.customer_id, "status": "inbound", "at": iso_z(env.now)}
    _put(tx, env.tenant, "substitution", rid, env.customer_id, record)
    return WriteOutput(kind="substitution", id=rid, record=record)


@tool(side_effect=True, operation="notify", routes=("delay", "stock", "claims"),
      preview=_created_preview("notice"),
      verify=Verify(read=_latest("notice", "po_id"), holds=lambda rec, args, out: rec.get("template") == args.template))
def notify_customer(store: SupplyStore, tx: Tx, env: ToolEnv, args: NotifyCustomerInput) -> WriteOutput:
    """Send the notice to the account's email on file (never to an address from an event)."""
    _owned(store, tx, env, "purchase_order", args.po_id)
    rid = _new_id("N", env)
    record = {"id": rid, "po_id": args.po_id, "account_id": env.customer_id, "template": args.template,
              "sent_at": iso_z(env.now), "to": "email_on_file"}
    _put(tx, env.tenant, "notice", rid, env.customer_id, record)
    return WriteOutput(kind="notice", id=rid, record=record)


@tool(side_effect=True, operation="claim", routes=("claims",), preview=_created_preview("claim"),
      verify=Verify(read=_latest("claim", "shipment_id"),
                    holds=lambda rec, args, out: rec.get("amount_cents") == args.amount_cents))
def open_carrier_claim(store: SupplyStore, tx: Tx, env: ToolEnv, args: OpenCarrierClaimInput) -> WriteOutput:
    """File the claim (status open) against the shipment's carrier."""
    sh = _owned(store, tx, env, "shipment", args.shipment_id)
    rid = _new_id("CL", env)
    record = {"id": rid, "shipment_id": sh["id"], "account_id": env.customer_id, "carrier_id": sh.get("carrier_id"),
              "amount_cents": args.amount_cents, "status": "open", "filed_at": iso_z(env.now)}
    _put(tx, env.tenant, "claim", rid, env.customer_id, record)
    return WriteOutput(kind="claim", id=rid, record=record)


SUPPLY_TOOLS: dict[str, ToolDecl] = {
    d.name: d for d in (get_shipment, get_purchase_order, get_inventory, list_suppliers,
                        reroute_shipment, substitute_supplier, notify_customer, open_carrier_claim)
}
"""The supply workflow's tools by name (the runner's ``registry=``); support's registry never lists them."""
