"""A collector whose database disk fills (a real tmpfs, ENOSPC): it refuses the batches it cannot store, the agents
keep them, and once the disk has room every event arrives; nothing is lost and the collector never stops."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

from unlinkwatch.agent.metrics import AgentMetrics
from unlinkwatch.agent.ship.shipper import Shipper, ShipperConfig
from unlinkwatch.collector.store import open_store

from bench import workload
from tests.conftest import require_root
from tests.support.collector import free_port, start_subprocess
from tests.support.eventgen import events


def test_a_collector_with_a_full_disk_keeps_running_and_stores_everything_once_it_has_room(tmp_path: Path) -> None:
    require_root()
    port = free_port()
    with workload.tmpfs_mount(max_files=100, size="3m") as disk:
        db = f"sqlite:///{disk}/events.db"
        metrics = free_port()
        log_path = tmp_path / "collector.log"
        proc = start_subprocess(db, port, "--metrics-addr", f"127.0.0.1:{metrics}", log_path=log_path)
        s = Shipper(ShipperConfig(collector=f"127.0.0.1:{port}", agent_id="n:1", node="n", attach_mode="tracepoint",
                                  spool_dir=str(tmp_path / "spool"), batch_max_delay_s=0.05), AgentMetrics())
        s.start()
        try:
            evs = events("n:1", 1, 20_000)
            for i in range(0, len(evs), 500):
                s.submit(evs[i:i + 500], [])
            deadline = time.monotonic() + 60
            while "database or disk is full" not in log_path.read_text():
                assert time.monotonic() < deadline, log_path.read_text()[-2000:]
                time.sleep(0.2)
            time.sleep(2)  # the agent retries meanwhile; the collector refuses again
            assert proc.poll() is None and s.backlog() > 0
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
            [refusals] = [x for x in body.splitlines() if x.startswith("unlinkwatch_ingest_store_refusals_total")]
            assert float(refusals.split()[-1]) >= 2  # the first refusal and the agent's retries
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
            deadline = time.monotonic() + 90
            while s.backlog():
                assert time.monotonic() < deadline, f"backlog {s.backlog()}"
                time.sleep(0.2)
            assert s.lost() == {"kernel": 0, "queue": 0, "transport": 0} and proc.poll() is None
            time.sleep(1.5)  # a few checkpoints (every 0.5 s) on the disk with room
        finally:
            s.close()
            proc.terminate()
            proc.wait(30)
        log = log_path.read_text()
        # one line for the refusals (at most one per 30 s) and one for the checkpoints; no traceback, and the WAL
        # checkpoints outlived the full disk (a dead checkpointer leaves the WAL to grow for good)
        assert log.count("the store cannot take batches") == 1 and log.count("WAL checkpoint failed") <= 1
        assert "Traceback" not in log and "Exception in thread" not in log, log[-3000:]
        store = open_store(db)
        try:
            [a] = store.agents()
            assert (a.events, a.max_seq, a.gaps) == (20_000, 20_000, 0)
        finally:
            store.close()
