"""Rate limiting and flow control: token buckets (smooth pacing), adaptive back-off on throttling."""

from throughput.adaptive import AdaptiveRate
from throughput.token_bucket import TokenBucket

__all__ = ["AdaptiveRate", "TokenBucket"]
