"""Which USB devices the station may mount and read: ``[devices] policy``, ``allow``, ``block``.

Docking stations refuse USB storage that is not an authorised camera (a
private USB stick, an SD card in a reader).  The policy judges a device by
what its USB descriptors say (VID:PID and serial, read from sysfs or from
the serial-port enumeration), before anything on it is mounted or read:

* ``block`` rules refuse a device whatever the policy (a lost camera, a
  model withdrawn from service);
* ``"any"``: every other device is read;
* ``"catalog"``: devices whose VID:PID the device catalog lists, and those
  an ``allow`` rule names;
* ``"allow-list"``: only devices an ``allow`` rule names.

A rule names ``usb_id`` ("VID:PID", any case), ``serial`` (the USB serial
number, exactly), or both (both must match).  A device without a USB
identity (a loop device, a serial port given by path) is read under
``"any"`` only, unless the catalog names it by configuration.

The same judgement runs in the privileged mount helper (a refused device
is never mounted) and in the daemon (a refused volume or serial port is
never read, however it got there); both record a ``device.refused``
custody log entry and an alert naming the device.
"""

# option() returns a dataclasses.field; ruff's RUF009 cannot tell it from a call.

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.configschema import load_section, option

if TYPE_CHECKING:
    from agent.store import Store

POLICIES = ("any", "catalog", "allow-list")
RESERVED_KEYS = ("policy", "allow", "block")  # keys of [devices] that are not drivers
USB_ID = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}")
# USB string descriptors hold at most 126 UTF-16 units; printable, no separators.
_SERIAL = re.compile(r"[\x21-\x7e]{1,126}")


@dataclass(frozen=True)
class Rule:
    """One ``allow`` or ``block`` entry: a VID:PID, a USB serial, or both."""

    usb_id: str | None = option(None, doc="USB 'VID:PID' in hex, as lsusb prints it.")
    serial: str | None = option(None, doc="USB serial number, exactly as the device gives it.")

    def matches(self, identity: UsbIdentity) -> bool:
        if self.usb_id is not None and self.usb_id.lower() != identity.usb_id:
            return False
        return self.serial is None or self.serial == identity.serial

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in (("usb_id", self.usb_id),
                                                ("serial", self.serial)) if v is not None)


@dataclass(frozen=True)
class _PolicyKeys:
    policy: str = option("any", choices=POLICIES,
                         doc="Which USB devices are read: 'any', 'catalog' or 'allow-list'.")


@dataclass(frozen=True)
class UsbIdentity:
    """What a USB device says about itself; every field is device-provided text."""

    usb_id: str  # "vvvv:pppp", lower case; "" when the device is not on USB
    serial: str = ""
    port: str = ""  # the USB port path in sysfs, e.g. "1-1.2" (where it is plugged in)
    manufacturer: str = ""
    product: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"usb_id": self.usb_id, "serial": self.serial, "port": self.port,
                "manufacturer": self.manufacturer, "product": self.product}


@dataclass(frozen=True)
class DevicePolicy:
    """The validated ``[devices]`` policy keys; the default reads every device."""

    policy: str = "any"
    allow: tuple[Rule, ...] = ()
    block: tuple[Rule, ...] = ()

    def refusal(self, identity: UsbIdentity | None, *, catalogued: bool) -> str | None:
        """Why the device must not be read, or None when it may be.

        ``catalogued`` says whether the device catalog knows the device (its
        VID:PID, or a catalog entry configured for it).
        """
        if identity is not None:
            for rule in self.block:
                if rule.matches(identity):
                    return f"blocked by devices.block ({rule})"
        if self.policy == "any":
            return None
        allowed = identity is not None and any(r.matches(identity) for r in self.allow)
        if allowed:
            return None
        if self.policy == "catalog":
            if catalogued:
                return None
            if identity is None or not identity.usb_id:
                return "not a USB device, and policy 'catalog' reads catalogued cameras only"
            return (f"USB {identity.usb_id} is not in the device catalog nor in devices.allow "
                    "(policy 'catalog')")
        if identity is None or not identity.usb_id:
            return "not a USB device, and policy 'allow-list' reads listed devices only"
        return f"USB {identity.usb_id} serial {identity.serial or '(none)'} is not in " \
               "devices.allow (policy 'allow-list')"


def parse_policy(table: dict[str, Any], problems: list[str]) -> DevicePolicy:
    """Read the reserved keys of the ``[devices]`` table; problems name their key paths."""
    before = len(problems)
    keys = load_section(_PolicyKeys, {k: table[k] for k in ("policy",) if k in table},
                        "devices", problems)
    rules: dict[str, list[Rule]] = {"allow": [], "block": []}
    for name, found in rules.items():
        items = table.get(name, [])
        if not isinstance(items, list):
            problems.append(f"devices.{name}: expected a list of tables, got "
                            f"{type(items).__name__}")
            continue
        for i, item in enumerate(items):
            where = f"devices.{name}[{i}]"
            if not isinstance(item, dict):
                problems.append(f"{where}: expected a table, got {type(item).__name__}")
                continue
            rule = load_section(Rule, item, where, problems)
            if rule.usb_id is None and rule.serial is None:
                problems.append(f"{where}: give usb_id, serial or both")
            if rule.usb_id is not None and not USB_ID.fullmatch(rule.usb_id):
                problems.append(f"{where}.usb_id: {rule.usb_id!r} is not 'VID:PID' in hex "
                                "(e.g. '0603:8612')")
            if rule.serial is not None and not _SERIAL.fullmatch(rule.serial):
                problems.append(f"{where}.serial: {rule.serial!r} is not a USB serial number "
                                "(1 to 126 printable characters, no spaces)")
            found.append(rule)
    if keys.policy == "allow-list" and "allow" not in table:
        problems.append("devices.allow: policy 'allow-list' needs at least one entry "
                        "(otherwise no device is ever read)")
    if len(problems) > before:
        return DevicePolicy()
    return DevicePolicy(keys.policy, tuple(rules["allow"]), tuple(rules["block"]))


@dataclass(frozen=True)
class Refusal:
    """A device the policy refused: what it said about itself, where, and why.

    ``handle`` names this docking (a block device, a mount point, a serial
    port); it is station-side text, never device-provided.
    """

    identity: UsbIdentity
    reason: str
    policy: str
    driver: str
    handle: str
    facts: dict[str, str] = field(default_factory=dict)  # e.g. {"device": "/dev/sdb1"}

    def body(self) -> dict[str, Any]:
        """The custody log body and alert fields (docs/FORMATS.md ``device.refused``)."""
        return {**self.identity.as_dict(), "reason": self.reason, "policy": self.policy,
                "driver": self.driver, "handle": self.handle, **self.facts}

    def message(self) -> str:
        ident = self.identity
        return (f"refused USB device {ident.usb_id or '(no USB id)'} serial "
                f"{ident.serial or '(none)'} on port {ident.port or '(unknown)'} "
                f"({self.handle}): {self.reason}; nothing on it was mounted or read")

    def to_json(self) -> str:
        return json.dumps(self.body(), ensure_ascii=False, sort_keys=True)


def record_refusal(store: Store, refusal: Refusal) -> None:
    """One ``device.refused`` custody log entry and its alert, in one transaction."""
    body = refusal.body()
    with store.transaction() as tx:
        tx.log("device.refused", None, body)
        tx.event("alert", {"code": "device.refused", "message": refusal.message(), **body})


def recent_refusals(store: Store, limit: int = 10) -> list[dict[str, Any]]:
    """The last ``limit`` refusals, newest first, as ``status`` shows them."""
    rows = store.query("SELECT at, body FROM custody_log WHERE kind = 'device.refused' "
                       "ORDER BY seq DESC LIMIT ?", (limit,))
    return [{"at": row["at"], **json.loads(row["body"])} for row in rows]
