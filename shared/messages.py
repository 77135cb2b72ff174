"""The queue message: what the API tells a worker. Only an id; the state lives in Redis."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

OpType = Literal["snapshot.create", "snapshot.restore", "snapshot.delete"]

# Operation type → actor name. The workers register actors with exactly these names; the
# API only knows the names, so it never imports worker code.
ACTOR_NAMES: Final[dict[str, str]] = {
    "snapshot.create": "snapshot_create",
    "snapshot.restore": "snapshot_restore",
    "snapshot.delete": "snapshot_delete",
}


class OperationMessage(msgspec.Struct, forbid_unknown_fields=True):
    """The kwargs of every actor; actors validate them with ``msgspec.convert``."""

    operation_id: Annotated[int, msgspec.Meta(ge=1)]
