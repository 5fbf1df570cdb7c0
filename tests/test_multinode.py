"""Two Ray nodes on this machine, as two machines would run it (`make test-cluster`).

A head (`ray start --head`, the way `make serve` starts it, with the custom resource that
marks it) and a worker node (`ray start --address`, its own ports), serve_config.yaml spread
over them by deployments.multinode (a Preprocess and a Model replica on each node, the
Ingress on the head), the registry in one shared folder. The tests run in order: reads on
both nodes, a promotion reaching both, the worker node killed under load and brought back,
then training with a worker on each node that survives losing one.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from benchmarks.load import ReaderThreads
from deployments.cluster import BIN, Cluster, Node
from deployments.multinode import HEAD_RESOURCE, spread
from handai.manifest import parse_manifest
from handai.registry import MANIFEST_FILE
from tests.browser import headless_chromium
from tests.conftest import ADMIN_KEY, ROOT, Listener, free_port, free_ports, registry_with, started
from tests.images import DATA, HWD, MNIST

pytestmark = pytest.mark.multinode

SEVEN = (HWD / "7-001.png").read_bytes()
DEPLOYMENTS = ("Ingress", "Preprocess", "Model")
SHOTS = ROOT / "artifacts" / "cluster"
CLIENTS = 3


@dataclass
class TwoNodes:
    cluster: Cluster
    worker: Node
    model_dir: Path
    artifacts: Path

    @property
    def url(self) -> str:
        return self.cluster.url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, headers={"X-Api-Key": ADMIN_KEY})

    def metrics_urls(self) -> list[str]:
        return [
            f"http://127.0.0.1:{port}/metrics"
            for port in (self.cluster.ports.metrics, self.worker.metrics)
        ]


def worker_node() -> Node:
    return Node(
        name="b",
        cpus=2,
        resources={"handai_worker": 1},
        node_manager=free_port(),
        object_manager=free_port(),
        metrics=free_port(),
        agent=free_port(),
        agent_grpc=free_port(),
        runtime_env_agent=free_port(),
    )


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[TwoNodes]:
    work = tmp_path_factory.mktemp("two-nodes")
    storage = work / "storage"  # one folder both nodes read: the shared storage.root
    model_dir = registry_with(storage, "test-a", "test-b")
    ports = free_ports(replica_http=23000, replica_grpc=24000)  # apart from the others
    cluster = Cluster(
        ports=ports,
        state=Path(tempfile.mkdtemp(prefix="handai-n")),
        cpus=2,
        resources={HEAD_RESOURCE: 1},
        env_extra={
            "REDIS_URL": redis_url,
            "STORAGE__ROOT": str(storage),
            "APP__DATA_ROOT": str(DATA),
            "SECURITY__ADMIN_KEY": ADMIN_KEY,
        },
    )
    config = spread(yaml.safe_load((ROOT / "serve_config.yaml").read_text()), nodes=2)
    config["http_options"]["port"] = ports.http
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    two = TwoNodes(cluster, worker_node(), model_dir, storage / "artifacts")
    with started(cluster, work):
        cluster.add_node(two.worker)
        cluster.deploy(config_path)
        cluster.wait_running(["handai"])
        wait_spread(two)
        yield two


def replicas(two: TwoNodes) -> dict[str, list[dict[str, Any]]]:
    """RUNNING replicas per deployment, from Serve's REST API."""
    details = httpx.get(f"{two.cluster.dashboard}/api/serve/applications/", timeout=30).json()
    deployments = details["applications"]["handai"]["deployments"]
    return {
        name: [r for r in d["replicas"] if r["state"] == "RUNNING"]
        for name, d in deployments.items()
    }


def head_node_id(two: TwoNodes) -> str:
    reply = httpx.get(f"{two.cluster.dashboard}/api/v0/nodes", timeout=30).json()
    heads = [n for n in reply["data"]["result"]["result"] if n["is_head_node"]]
    return str(heads[0]["node_id"])


def wait_spread(two: TwoNodes, timeout: float = 240) -> None:
    """Until Preprocess and Model each run one replica on each of the two nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = replicas(two)
        if all(len({r["node_id"] for r in running[name]}) == 2 for name in ("Preprocess", "Model")):
            return
        time.sleep(2)
    raise AssertionError(f"not spread over two nodes: {running}")


def read(c: httpx.Client) -> httpx.Response:
    return c.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")})


def forward_passes(two: TwoNodes) -> Counter[str]:
    """Forward passes per Model replica, from both nodes' metrics exports."""
    counts: Counter[str] = Counter()
    for url in two.metrics_urls():
        for line in httpx.get(url, timeout=30).text.splitlines():
            if line.startswith("ray_handai_batch_size_count{"):
                replica = re.search(r'[Rr]eplica(?:Id)?="([^"]+)"', line)
                if replica:
                    counts[replica[1]] += int(float(line.rsplit(" ", 1)[1]))
    return counts


class Load(ReaderThreads):
    """CLIENTS closed-loop readers; a read that fails is tried once more, as the bot does."""

    def __init__(self, two: TwoNodes) -> None:
        self.two = two
        self.models: Counter[str] = Counter()
        self.retried: list[str] = []
        self.failed: list[str] = []
        super().__init__(CLIENTS)

    def read_loop(self) -> None:
        with self.two.client() as c:
            while not self.stop.is_set():
                reply = read(c)
                if reply.status_code != 200:
                    self.retried.append(f"{reply.status_code} {reply.text[:120]}")
                    time.sleep(float(reply.headers.get("retry-after", "1")))
                    reply = read(c)
                if reply.status_code == 200:
                    self.models[reply.json()["model_id"]] += 1
                else:
                    self.failed.append(f"{reply.status_code} {reply.text[:200]}")


def test_each_node_holds_a_graph_and_both_answer(nodes: TwoNodes) -> None:
    running = replicas(nodes)
    head = head_node_id(nodes)
    assert [r["node_id"] for r in running["Ingress"]] == [head]
    for name in ("Preprocess", "Model"):
        assert len({r["node_id"] for r in running[name]}) == 2, running[name]
    before = forward_passes(nodes)
    with Load(nodes):
        time.sleep(10)
    deadline = time.monotonic() + 30  # Ray exports metrics every few seconds
    while time.monotonic() < deadline:
        grew = {k for k, v in forward_passes(nodes).items() if v > before.get(k, 0)}
        if len(grew) >= 2:
            break
        time.sleep(2)
    assert len(grew) == 2, f"forward passes grew on {grew} only"


def test_the_ray_dashboard_serve_page_shows_the_graph(nodes: TwoNodes) -> None:
    """What an operator opens first (docs/operations.md shows this screenshot)."""
    browser = headless_chromium("--window-size=1400,1000")
    try:
        browser.get(f"{nodes.cluster.dashboard}/#/serve")
        WebDriverWait(browser, 60).until(
            lambda b: all(n in b.find_element(By.TAG_NAME, "body").text for n in DEPLOYMENTS)
        )
        time.sleep(2)  # the status icons and counts fill in after the names
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / "ray-serve-page.png"))
        text = browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.quit()
    assert "handai" in text and "HEALTHY" in text.upper()


def test_a_promotion_reaches_both_nodes_with_no_failed_read(nodes: TwoNodes) -> None:
    with nodes.client() as c:
        before = c.get("/v1/models/active").json()["model_id"]
        target = "test-b" if before != "test-b" else "test-a"
        with Load(nodes) as load:
            time.sleep(2)
            swap = c.post("/v1/admin/models/activate", json={"model_id": target}, timeout=180)
            time.sleep(3)
        assert swap.status_code == 200, swap.text
        assert load.failed == [] and load.retried == []
        assert load.models[target] > 0
        after = Counter(read(c).json()["model_id"] for _ in range(40))
    assert after == Counter({target: 40})  # every replica, on both nodes, serves the new one


def test_losing_the_worker_node_under_load_fails_no_read(nodes: TwoNodes) -> None:
    with Load(nodes) as load:
        time.sleep(3)
        killed = nodes.cluster.kill_node(nodes.worker)
        time.sleep(15)
        answered_after_kill = sum(load.models.values())
    assert killed >= 2  # the raylet and the replicas under it
    assert load.failed == [], load.failed[:5]
    assert answered_after_kill > 20
    running = replicas(nodes)
    assert all(len(running[name]) >= 1 for name in ("Ingress", "Preprocess", "Model"))
    # The node comes back (a replaced machine joins with the same resources): Serve places
    # the missing replicas on it again.
    nodes.cluster.add_node(nodes.worker)
    wait_spread(nodes)
    with nodes.client() as c:
        assert read(c).status_code == 200


def test_training_with_a_worker_on_each_node_survives_losing_one(
    nodes: TwoNodes, redis_url: str
) -> None:
    """Two Ray Train workers (DDP over gloo), one per node, the worker node killed during
    epoch 2 and brought back: the job resumes from its checkpoint and completes."""
    run = nodes.artifacts / "runs" / "two-node-run"
    listener = Listener(redis_url)
    job = subprocess.Popen(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            nodes.cluster.dashboard,
            "--submission-id",
            "two-node-train",
            "--",
            sys.executable,
            "-m",
            "train.job",
            "--model-id",
            "two-node",
            "--run-name",
            "two-node-run",
            "--epochs",
            "2",
            "--num-workers",
            "2",
            "--threads-per-worker",
            "1",
            # One CPU each: the even split of the cluster's free CPUs (2.25 here) would not
            # fit the head's share (1.0) beside its replicas.
            "--cpus-per-worker",
            "1",
            "--batch-size",
            "64",
            "--train-limit",
            "2000",
            "--data-root",
            str(MNIST),
            "--artifacts",
            str(nodes.artifacts),
        ],
        env=nodes.cluster.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = train_through_a_node_loss(nodes, job, run)
    finally:
        listener.stop.set()
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-3000:]
    manifest = parse_manifest((nodes.artifacts / "two-node" / MANIFEST_FILE).read_bytes())
    assert manifest.model_dump()["epochs"] == 2
    events = listener.of("two-node")
    epochs = [e["epoch"] for e in events if e["type"].endswith(".epoch.v1")]
    assert epochs == [1, 2], epochs  # resumed from the checkpoint: epoch 1 not trained again
    wait_spread(nodes)  # and serving is whole again


def train_through_a_node_loss(nodes: TwoNodes, job: subprocess.Popen[str], run: Path) -> str:
    """Waits for epoch 1's checkpoint, kills the worker node, brings it back; the output."""
    deadline = time.monotonic() + 420
    while not list(run.glob("checkpoint_*")) and time.monotonic() < deadline:
        if job.poll() is not None:
            raise AssertionError(job.communicate()[0][-3000:])
        time.sleep(0.5)
    if not list(run.glob("checkpoint_*")):
        job.kill()
        raise AssertionError(
            "no checkpoint after the first epoch:\n" + job.communicate()[0][-3000:]
        )
    workers = train_worker_nodes(nodes)
    assert len(set(workers)) == 2, f"expected a training worker on each node: {workers}"
    time.sleep(2)  # epoch 2 under way
    nodes.cluster.kill_node(nodes.worker)
    time.sleep(5)
    nodes.cluster.add_node(nodes.worker)
    return job.communicate(timeout=900)[0]


def train_worker_nodes(nodes: TwoNodes) -> list[str]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=nodes.cluster.dashboard,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    return [str(a.node_id) for a in actors]
