"""A throwaway NATS cluster with JetStream on loopback ports, for tests and benchmarks.

Each node gets a configuration of the same shape as `cluster/nats-N.conf` (the one `make
cluster` starts), written into a folder of its own with free ports, so a test session runs
beside a `make cluster` or another session without clashing. Nodes can be killed and started
again on the same ports and data, which is how the tests take one down mid-ingest.
"""

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = """server_name: {name}
listen: 127.0.0.1:{client}
max_payload: 8MB
jetstream {{
  store_dir: "{store}"
  max_memory_store: 256MB
  max_file_store: 8GB
}}
cluster {{
  name: {cluster}
  listen: 127.0.0.1:{route}
  routes: [{routes}]
}}
"""


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (held open together so they differ)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    name: str
    client_port: int
    config: Path
    log: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(["nats-server", "-c", str(self.config), "-l", str(self.log)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        """Stop the node at once, as a crash would (SIGKILL: nothing flushed, no goodbye)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Cluster:
    folder: Path
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Every node's address, comma-separated: the client fails over among them."""
        return ",".join(n.url for n in self.nodes)

    def journal_url(self, volume: str) -> str:
        """The `--journal` URL of `volume` on this cluster."""
        hosts = ",".join(f"127.0.0.1:{n.client_port}" for n in self.nodes)
        return f"nats://{hosts}/{volume}"

    def start(self, timeout_s: float = 20.0) -> "Cluster":
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Until every running node has joined and the cluster has a JetStream metadata leader."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            logs = [n.log.read_text() if n.log.exists() else "" for n in self.nodes]
            running = [n.process is not None and n.process.poll() is None for n in self.nodes]
            for node, up in zip(self.nodes, running, strict=True):
                if node.process is not None and not up:
                    raise RuntimeError(f"nats-server {node.name} exited: see {node.log}")
            if all("Server is ready" in log for log, up in zip(logs, running, strict=True) if up) and any(
                    "metadata leader" in log for log in logs):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the NATS cluster in {self.folder} was not ready in {timeout_s} s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def make_cluster(folder: Path, nodes: int = 3, name: str = "portjournal-test") -> Cluster:
    """Configure (not start) a cluster of `nodes` servers in `folder` on free loopback ports."""
    folder = Path(folder)
    if shutil.which("nats-server") is None:
        raise RuntimeError("nats-server is not installed: 'make setup' installs the Debian package")
    ports = free_ports(2 * nodes)
    clients, routes = ports[:nodes], ports[nodes:]
    route_list = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
    cluster = Cluster(folder)
    for i in range(nodes):
        node_dir = folder / f"n{i + 1}"
        node_dir.mkdir(parents=True, exist_ok=True)
        config = node_dir / "nats.conf"
        config.write_text(CONFIG.format(name=f"n{i + 1}", client=clients[i], store=node_dir / "store",
                                        cluster=name, route=routes[i], routes=route_list))
        cluster.nodes.append(Node(f"n{i + 1}", clients[i], config, node_dir / "nats.log"))
    return cluster
