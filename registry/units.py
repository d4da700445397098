"""A unit's traceability record: the one row that binds a serial to production, supply and sale.

The same field names are the columns of import files (CSV/Parquet), of the ``units`` table and of the
API. Times are epoch seconds; ``0`` means "not yet" (not shipped, not sold) or unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

# Fields a producing system owns, grouped as the ERP/MES/CRM exports usually are.
PRODUCTION_FIELDS = ("model", "batch", "line", "plant", "produced_at", "supplier_lots")
SHIPMENT_FIELDS = ("shipped_at", "channel", "distributor", "retailer", "store", "region", "city")
SALE_FIELDS = ("sold_at",)
CUSTOMER_FIELDS = ("customer_id", "customer_phone", "customer_email", "member_id", "contact_consent")
UNIT_FIELDS = ("serial", *PRODUCTION_FIELDS, *SHIPMENT_FIELDS, *SALE_FIELDS, *CUSTOMER_FIELDS)
TIME_FIELDS = ("produced_at", "shipped_at", "sold_at")
# Personal data: shown only to roles that contact customers.
CONTACT_FIELDS = ("customer_phone", "customer_email", "member_id")

MAX_TEXT = 128
# Control characters (Unicode category Cc: C0, DEL and C1) as a regex class body. Names and serials
# never hold them: they key cells and topics, print on notices and Slack, and fill CSV exports.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f"
MAX_LOTS = 64


@dataclass(frozen=True, slots=True)
class Unit:
    serial: str
    model: str = ""
    batch: str = ""
    line: str = ""
    plant: str = ""
    produced_at: int = 0
    supplier_lots: dict[str, str] = field(default_factory=dict)  # component -> lot
    shipped_at: int = 0
    channel: str = ""
    distributor: str = ""
    retailer: str = ""
    store: str = ""
    region: str = ""
    city: str = ""
    sold_at: int = 0
    customer_id: str = ""
    customer_phone: str = ""
    customer_email: str = ""
    member_id: str = ""
    contact_consent: bool = False

    @property
    def reachable(self) -> bool:
        """A customer we may contact and have a way to reach."""
        return self.contact_consent and bool(self.customer_phone or self.customer_email)

    def with_fields(self, **changes: Any) -> Unit:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in UNIT_FIELDS}


def format_lots(lots: dict[str, str]) -> str:
    """The file form of supplier lots: ``component=lot`` pairs joined by ``;``, components sorted.

    >>> format_lots({"motor": "L-77", "battery": "B-1"})
    'battery=B-1;motor=L-77'
    """
    return ";".join(f"{c}={lot}" for c, lot in sorted(lots.items()))


def parse_lots(text: str) -> dict[str, str]:
    """Parse ``component=lot;...``; raises ValueError naming the bad pair.

    >>> parse_lots("battery=B-1; motor=L-77")
    {'battery': 'B-1', 'motor': 'L-77'}
    """
    lots: dict[str, str] = {}
    if not text.strip():
        return lots
    for pair in text.split(";"):
        component, sep, lot = pair.partition("=")
        component, lot = component.strip(), lot.strip()
        if not sep or not component or not lot:
            raise ValueError(f"supplier_lots entry {pair.strip()!r} is not component=lot")
        if len(component) > MAX_TEXT or len(lot) > MAX_TEXT:
            raise ValueError(f"supplier_lots entry {pair.strip()!r} is longer than {MAX_TEXT} characters")
        if component in lots:
            raise ValueError(f"supplier_lots names component {component!r} twice")
        lots[component] = lot
    if len(lots) > MAX_LOTS:
        raise ValueError(f"supplier_lots has more than {MAX_LOTS} components")
    return lots
