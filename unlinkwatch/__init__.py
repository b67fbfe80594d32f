"""unlinkwatch: records every file deletion on a Kubernetes node with its pod, container and process."""

import os

__version__ = "0.5.0"

# gRPC's fork handlers (on in grpcio's builds) make a fork() wait, with the forking thread holding the GIL, for
# gRPC's own threads, which may be waiting for the GIL: a Popen with preexec_fn while a channel is busy could hang
# for ever (a test did, once). Every process unlinkwatch forks execs at once, the case gRPC documents turning
# them off for; set here, before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
