"""What a projection runner tells others after it commits: the post-commit hook.

A :class:`CommitListener` hears of every batch a runner has committed (read-model writes and
checkpoint together) and of every rewind (a rebuild emptied the read model). The consistency
waiter wakes queries waiting for a position; the query cache invalidates what the batch
touched. Guarantees the runner keeps:

1. ``committed`` is called only after the batch's transaction has committed, in commit
   order, once per batch, before the runner reads its next page.
2. ``rewound`` is called after a rebuild's reset has committed, before the replay starts.
3. A listener that raises is logged and ignored: nothing on the write or projection path
   depends on a listener (Redis may be down).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from cqrskit.messages import LogPosition, RecordedEvent

if TYPE_CHECKING:
    from cqrskit.projections.projection import Projection

__all__ = ["CommitListener"]


class CommitListener(Protocol):
    """Hears of a projection's committed batches and rewinds."""

    async def committed(
        self, projection: Projection, position: LogPosition, page: Sequence[RecordedEvent]
    ) -> None:
        """``page`` (all of it, handled or not) is applied; the checkpoint is ``position``."""
        ...

    async def rewound(self, projection: Projection) -> None:
        """The projection's read model was emptied and its checkpoint rewound to the start."""
        ...
