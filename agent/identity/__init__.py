"""The identify stage: a deletion's cgroup id -> its container and pod, never blocking on the API.
cgroups.py maps ids to cgroup paths, podpath.py parses kubelet paths, kube.py watches this node's pods
(owners.py resolves their workloads), resolver.py puts them together and emits late joins."""

from .resolver import Identity, IdentityConfig, IdentityResolver

__all__ = ["Identity", "IdentityConfig", "IdentityResolver"]
