"""The agent's Prometheus metrics, built in main() on a registry of their own and passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("unlinkwatch_agent_events", "Deletions read from the kernel",
                              ["op", "result"], registry=r)
        self.lost = Counter("unlinkwatch_agent_events_lost", "Events lost, by stage where they were lost",
                            ["stage"], registry=r)
        for stage in ("kernel", "queue", "transport"):
            self.lost.labels(stage)
        self.attach_mode = Gauge("unlinkwatch_agent_attach_mode", "1 for the live attach mode",
                                 ["mode", "hook"], registry=r)
        self.identity = Counter("unlinkwatch_agent_identity", "Events by identity state at the agent",
                                ["state"], registry=r)
        self.batches = Counter("unlinkwatch_agent_batches_acked", "Batches acknowledged by the collector",
                               registry=r)
        self.spool_bytes = Gauge("unlinkwatch_agent_spool_bytes", "Bytes waiting in the disk spool", registry=r)
        self.spool_write_errors = Counter("unlinkwatch_agent_spool_write_errors", "Batches the disk spool refused "
                                          "(a full or failing disk): they stay in memory and the write is retried",
                                          registry=r)
        self.stdout_lost = Counter("unlinkwatch_agent_stdout_lines_lost", "--stdout lines the file refused (a full "
                                   "disk, an I/O error); the agent goes on and ships to its collector as before",
                                   registry=r)
        self.queue_depth = Gauge("unlinkwatch_agent_queue_events", "Events waiting in memory", registry=r)
        self.connected = Gauge("unlinkwatch_agent_collector_connected", "1 while the stream is up", registry=r)
        self.ship_latency = Histogram("unlinkwatch_agent_ack_latency_seconds", "Batch send to ack",
                                      registry=r)
        self.pods_known = Gauge("unlinkwatch_agent_pods_known",
                                "Live pods of this node known from the Kubernetes API", registry=r)
        self.filtered = Counter("unlinkwatch_agent_events_filtered", "Deletions an ignore rule of the node policy "
                                "dropped (in the kernel, or by the agent where the kernel could not decide)",
                                ["policy"], registry=r)
        self.unplaced = Counter("unlinkwatch_agent_events_unplaced", "Deletions outside the host's mount namespace "
                                "with no host_path: their namespace was gone before its mount table was read",
                                registry=r)
        self.policy_rules = Gauge("unlinkwatch_agent_policy_rules", "Rules of the node policy in force", registry=r)
        self.policy_enforcing = Gauge("unlinkwatch_agent_policy_enforcing",
                                      "1 when the kernel enforces block rules, 0 when they run as audit",
                                      registry=r)
        self.policy_reload_failures = Counter("unlinkwatch_agent_policy_reload_failures",
                                              "Policy file changes refused (the policy in force stayed)",
                                              registry=r)
        self.dir_cache = Counter("unlinkwatch_agent_dir_cache", "Base directories of relative deletions (cwd or "
                                 "dirfd) by how the kernel resolved them: from its directory cache (hit) or by "
                                 "walking the dentries (miss)", ["result"], registry=r)
        for result in ("hit", "miss"):
            self.dir_cache.labels(result)
        self.enforce_dir_cache = Counter("unlinkwatch_agent_enforce_dir_cache", "Directories of the block rules' "
                                         "checks (BPF LSM) by how the kernel resolved them: from the enforcement's "
                                         "own directory cache (hit) or by walking the dentries (miss)", ["result"],
                                         registry=r)
        self.startup_seconds = Gauge("unlinkwatch_agent_startup_seconds",
                                     "Compile + attach + self-test time", registry=r)
