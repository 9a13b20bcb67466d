"""The Lua scripts and key arithmetic the Redis stores (sync and asyncio) share.

Only the worker holding the claim may complete or release it (its lease may
have expired and another worker claimed the message since); a claim that
expired untaken may still be completed.
"""

from __future__ import annotations

__all__ = ["IF_OURS_DELETE", "IF_OURS_EXPIRE", "IF_OURS_SET", "ms"]

IF_OURS_SET = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or not held then
  return redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
end
return nil
"""
IF_OURS_EXPIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
IF_OURS_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def ms(seconds: float) -> int:
    """Return ``seconds`` as whole milliseconds, at least 1."""
    return max(1, int(seconds * 1000))
