"""Peer tools the benchmarks run next to the agent (bpftrace script, psutil poller)."""
