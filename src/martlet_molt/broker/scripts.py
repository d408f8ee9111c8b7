"""The Lua scripts that write run logs atomically (layout of keys and entries: `wire.py`).

`APPEND` is the owner's one command per flush: for every run in the flush it appends the
run's new events as one entry, skipping any already present (a batch re-sent after a lost
reply), and refuses appends to a run another instance ended or another owner writes.
`END_RUN` is the takeover of a dead owner's run: it appends `error` and `end` after whatever
the stream holds, and fences the run against its old owner.
"""

from __future__ import annotations

from enum import IntEnum


class AppendResult(IntEnum):
    """What `APPEND` did with one run's batch (returned with the stream's last `seq`)."""

    REFUSED = 0
    """The run was ended by another instance, or belongs to another owner: stop mirroring."""
    ACCEPTED = 1
    """Every event of the batch is in the stream (now, or already before)."""
    GAP = 2
    """The stream ends before the batch's first event (it was lost): resend from its end."""


# KEYS: log, meta of run 1, log, meta of run 2, ...
# ARGV: retention_ms, max_entries, then per run:
#   owner, session_id, principal, first seq, item count, ends ("1" if the batch ends the run),
#   the items (JSON, see wire.py).
# Returns per run: result code, the stream's last seq.
APPEND = r"""
local retention = ARGV[1]
local max_entries = ARGV[2]
local result = {}
local arg = 3
for k = 1, #KEYS, 2 do
  local log, meta = KEYS[k], KEYS[k + 1]
  local owner, session, principal = ARGV[arg], ARGV[arg + 1], ARGV[arg + 2]
  local first, count, ends = tonumber(ARGV[arg + 3]), tonumber(ARGV[arg + 4]), ARGV[arg + 5]
  local items = arg + 6
  arg = items + count
  local known = redis.call('HMGET', meta, 'owner', 'ended')
  local last = 0
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if top[1] then last = tonumber(string.match(top[1][1], '%-(%d+)$')) end
  local upto = first + count - 1
  local code = 1
  if (known[1] and known[1] ~= owner) or known[2] == 'taken' then
    code = 0
  elseif last >= upto then
    code = 1
  elseif last < first - 1 then
    code = 2
  elseif known[2] then
    code = 0
  else
    local parts = {}
    for i = last - first + 1, count - 1 do parts[#parts + 1] = ARGV[items + i] end
    redis.call('XADD', log, 'MAXLEN', '~', max_entries, '0-' .. upto,
      'f', last + 1, 'e', '[' .. table.concat(parts, ',') .. ']')
    last = upto
    if ends == '1' then
      redis.call('HSET', meta, 'ended', 'owner')
      redis.call('PEXPIRE', log, retention)
      redis.call('PEXPIRE', meta, retention)
    end
  end
  if code ~= 0 and not known[1] then
    redis.call('HSET', meta, 'session_id', session, 'principal', principal, 'owner', owner)
  end
  result[#result + 1] = code
  result[#result + 1] = last
end
return result
"""

# KEYS: log, meta. ARGV: retention_ms, max_entries, the items to append (error?, end).
# Returns 1 if it appended, 0 if the run had already ended or has no stream (then it is
# only fenced: its old owner can no longer append).
END_RUN = r"""
local log, meta = KEYS[1], KEYS[2]
local retention = ARGV[1]
if redis.call('HGET', meta, 'ended') then return 0 end
redis.call('HSET', meta, 'ended', 'taken')
redis.call('PEXPIRE', meta, retention)
if redis.call('EXISTS', log) == 0 then return 0 end
local last = 0
local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
if top[1] then last = tonumber(string.match(top[1][1], '%-(%d+)$')) end
local count = #ARGV - 2
redis.call('XADD', log, 'MAXLEN', '~', ARGV[2], '0-' .. (last + count),
  'f', last + 1, 'e', '[' .. table.concat(ARGV, ',', 3, #ARGV) .. ']')
redis.call('PEXPIRE', log, retention)
return 1
"""
