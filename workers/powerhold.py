"""A job putting its server's power back, only while the server is still its own.

A job that stopped a server (a capture with stop_server, a restore) starts it again or
leaves it as it was; but once its operation was cancelled or ended (the reaper's
deadline), another operation may have taken the server (a restore replacing the state),
and then the power is that one's. So a job first holds the server's power (a lease in
Redis, Store.hold_server_power), then sets it, and says what it set (held_by)."""

from __future__ import annotations

import logging

from shared.records import ServerRecord
from shared.store import Store
from workers.power import DEFAULT_TIMEOUT, PowerDriver, PowerError, PowerStatus, settle

log = logging.getLogger(__name__)

# How long a job putting a server's power back holds it from new operations at most (a
# start and its wait for the status, each up to the power timeout); a job that dies in
# between frees it then.
POWER_HOLD_S = int(2 * DEFAULT_TIMEOUT + 30)


class PowerHold:
    def __init__(self, store: Store) -> None:
        self.store = store

    def may_power(self, op_id: int, server: ServerRecord) -> bool:
        """Whether this job may put the server's power back now (then holding it for
        POWER_HOLD_S): not when its operation was cancelled or ended and another one took
        the server since (a restore replacing the state), which then owns its power."""
        if self.store.hold_server_power(server.id, op_id, POWER_HOLD_S):
            return True
        log.warning("operation %s: server %s is held by another operation now; its power "
                    "is left to that one", op_id, server.id)
        return False

    def start_again(self, op_id: int, server: ServerRecord, driver: PowerDriver) -> list[str]:
        """A capture's stopped server started again: the warnings of its snapshot."""
        if not self.may_power(op_id, server):
            return []
        try:
            driver.start()
        except PowerError as exc:
            self.store.set_server_power(server.id, "stopped", held_by=op_id)
            return [f"The server could not be started again after the capture: {exc}"]
        self.store.set_server_power(server.id, "running", held_by=op_id)
        return []

    def put_back(self, op_id: int, server: ServerRecord, driver: PowerDriver,
                 run: bool) -> None:
        """A restore the reaper ended: its server's power as before, when still ours."""
        if self.may_power(op_id, server):
            self.store.set_server_power(server.id, settled(driver, run), held_by=op_id)


def settled(driver: PowerDriver, run: bool) -> PowerStatus:
    """Brings the server to the wanted power state and answers what it really is."""
    return settle(driver, run)[0]
