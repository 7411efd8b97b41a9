"""The edge's link to the cloud LVLM: injected delay, circuit breaker, dispatch policy and the async gRPC client.

Everything here runs inside the edge `spotvlm` python-backend model but needs no server to test: the only
non-stdlib dependency is `tritonclient.grpc.aio`, and the link takes a client factory so tests can fake it.
"""

from python_backends.cloud.breaker import CircuitBreaker, CloudState
from python_backends.cloud.delay import DelayInjector, parse_delay_spec
from python_backends.cloud.dispatch import DispatchPolicy
from python_backends.cloud.link import CloudJob, CloudLink, CloudReply

__all__ = [
    "CircuitBreaker",
    "CloudJob",
    "CloudLink",
    "CloudReply",
    "CloudState",
    "DelayInjector",
    "DispatchPolicy",
    "parse_delay_spec",
]
