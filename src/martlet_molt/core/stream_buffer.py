"""The handoff's names, kept so that code written against it (and its three unit tests) runs
unchanged. This module is only these aliases; new code imports the modules they point to.

| handoff name          | what it is now                         |
|-----------------------|----------------------------------------|
| `StreamBuffer`        | `core.local_log.LocalLog`              |
| `StreamBufferManager` | `core.local_logs.LocalLogs`            |
| `StreamStatus`        | `core.status.RunStatus`                |

Their handoff methods stay on those classes: `LocalLog.put` (async) and `LocalLog.stream`
(the text of each delta, to the end); `LocalLogs.create`, `get`, `remove` and
`_cleanup_old_buffers`.
"""

from __future__ import annotations

from martlet_molt.core.local_log import LocalLog as StreamBuffer
from martlet_molt.core.local_logs import LocalLogs as StreamBufferManager
from martlet_molt.core.status import RunStatus as StreamStatus

__all__ = ["StreamBuffer", "StreamBufferManager", "StreamStatus"]
