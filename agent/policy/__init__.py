"""The node policy (`unlinkwatch agent --policy FILE`): rules that ignore, audit or block deletions, decided in
the kernel (agent/bpf/policy.h). model: the file; image: what the kernel maps hold; maps: writing them; runtime:
reloads, cgroup selectors, counters and the user-space fallback."""
