"""Device drivers and their registry.

One module per driver, each exporting ``SPEC`` (a :class:`drivers.base.DriverSpec`).
The registry is an explicit dict: a driver that fails to import stops start-up
with its name, rather than silently vanishing.
"""

from __future__ import annotations

from drivers import gat947, mass_storage, simulated
from drivers.base import DriverSpec

REGISTRY: dict[str, DriverSpec] = {
    simulated.SPEC.key: simulated.SPEC,
    mass_storage.SPEC.key: mass_storage.SPEC,
    gat947.SPEC.key: gat947.SPEC,
}
