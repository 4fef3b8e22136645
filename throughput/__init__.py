"""Rate limiting and flow control: token buckets per bind (account rate split over binds)."""

from throughput.token_bucket import TokenBucket

__all__ = ["TokenBucket"]
