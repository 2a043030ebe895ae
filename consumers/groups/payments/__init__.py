"""The ``payments`` consumer group: charges payments through a gateway, high priority first.

``payment:process_required`` is enqueued in ``payments_queue`` (a durable
priority queue); background workers charge the most urgent payment first
(amount over 1000 = high priority), so a high-priority payment never waits
behind a backlog of normal ones, and publish ``payment:processed`` (with the
transaction id) or ``payment:failed`` (with the error).

Example::

    group = build(resources)                     # SimulatedGateway from the settings
    group = build(resources, gateway=my_gateway) # any PaymentGateway
    depth = await queue_depth(resources.database)
"""

from ._gateway import ChargeResult, GatewayUnavailableError, PaymentDeclinedError, PaymentGateway, SimulatedGateway
from ._group import GROUP_NAME, WorkerOptions, build, result_event
from ._queue import MIGRATIONS, queue_depth

__all__ = [
    "GROUP_NAME",
    "MIGRATIONS",
    "ChargeResult",
    "GatewayUnavailableError",
    "PaymentDeclinedError",
    "PaymentGateway",
    "SimulatedGateway",
    "WorkerOptions",
    "build",
    "queue_depth",
    "result_event",
]
