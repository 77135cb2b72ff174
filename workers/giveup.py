"""A job interrupted more times than it may be retried (max_attempts): what its killed
attempts owe the server is paid before the operation fails with `worker_lost` (a post
hook, a start, a restore's half-done patch put back and its power as before), so a
server is never left stopped, frozen or half restored by a job nobody runs any more."""

from __future__ import annotations

import logging

from shared.records import OperationRecord
from shared.store import Store
from workers.catalog import PLACEHOLDER_PREFIX
from workers.engine import Engine, EngineError, StateSpec
from workers.hooks import HookRunner
from workers.power import PowerFactory, PowerStatus
from workers.powerhold import PowerHold, settled

log = logging.getLogger(__name__)


class GiveUp:
    def __init__(self, store: Store, engine: Engine, hooks: HookRunner,
                 power_for: PowerFactory, power: PowerHold) -> None:
        self.store = store
        self.engine = engine
        self.hooks = hooks
        self.power_for = power_for
        self.power = power

    def __call__(self, op: OperationRecord) -> None:
        self._owed_hook(op)
        status = self.restore_back(op) if op.type == "snapshot.restore" else None
        self._owed_start(op)
        self.store.fail_operation(
            op.id,
            "worker_lost",
            f"The job was interrupted {op.attempts - 1} times; giving up.",
            server_status=status,
            power_settled=True,  # its start owed and its restore's power: settled above
        )

    def restore_back(self, op: OperationRecord) -> PowerStatus | None:
        """A restore ending for good unfinished (given up, or failed with what no handler
        expects): its state as before it (a half-done patch put back) and its server's
        power too; what the power really is, None when there is no driver to ask."""
        self._undo_restore(op)
        return self._owed_power(op)

    def _owed_hook(self, op: OperationRecord) -> None:
        """The post hook a killed capture owes its server, before the job is given up."""
        server = self.store.get_server(op.server_id)
        snapshot_id = op.safety_snapshot_id if op.type == "snapshot.restore" else op.snapshot_id
        if server is not None and snapshot_id is not None:
            self.hooks.owed(op.id, server, snapshot_id)

    def _owed_start(self, op: OperationRecord) -> None:
        """The start a given-up capture owes its server: an earlier attempt stopped it
        (stop_server) and died before starting it again."""
        if op.type != "snapshot.create" or not op.stop_server:
            return
        server = self.store.get_server(op.server_id)
        if server is not None and self.store.server_stopped_by(op.id):
            self.power.start_again(op.id, server, self.power_for(server))

    def _owed_power(self, op: OperationRecord) -> PowerStatus | None:
        """A given-up restore's server in the power state it had before (its attempts
        stopped it), and what it really is; None when there is no driver to ask."""
        server = self.store.get_server(op.server_id)
        if server is None or server.state.path.startswith(PLACEHOLDER_PREFIX):
            return None
        prior = server.prior_status != "stopped"
        return settled(self.power_for(server), prior)

    def _undo_restore(self, op: OperationRecord) -> None:
        """A restore killed for the last time: put back what a killed patch left half done
        (the next restore or capture would too, but the server may start before then)."""
        server = self.store.get_server(op.server_id)
        if server is None or server.state.path.startswith(PLACEHOLDER_PREFIX):
            return
        try:
            self.engine.recover(StateSpec(kind=server.state.kind, path=server.state.path))
        except (EngineError, OSError):
            log.exception("operation %s: could not recover the server's state", op.id)
