"""The real load-balancer configuration (deploy/nginx/bnfold.conf.template) in Debian's nginx, in front of
two `bnfold serve` replicas started with scripts/serve.sh on 127.0.0.2 and 127.0.0.3 (same port, as two
containers would be). nginx finds them as docker compose lets it: by asking DNS for the service name `api`
(here a loopback DNS server, tests/deploy/loopback_dns.py, in place of Docker's 127.0.0.11).

Evidence that a replica served a request comes from two sides: nginx's X-Bnfold-Upstream header and each
replica's own request counter on its /metrics. The tests share one set of processes and run in file order;
the last one stops the replicas.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.container_build import StageEnvironment
from tests.deploy.loopback_dns import LoopbackDns
from tests.deploy.nginx_runner import NginxProcess
from tests.deploy.reference import InferenceCase
from tests.deploy.replicas import Replica, free_port, http

pytestmark = pytest.mark.slow
REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3")
RESOLVER_VALID_SECONDS = 1
# nginx keeps time in whole seconds, so an answer valid for 1 s can be reused for up to 2 s more.
RESOLVER_REFRESH_SECONDS = RESOLVER_VALID_SECONDS + 2.1


@dataclass
class Cluster:
    replicas: list[Replica]
    dns: LoopbackDns
    nginx: NginxProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx.port}"

    def addresses(self, *replicas: Replica) -> list[str]:
        return [f"{replica.host}:{replica.port}" for replica in replicas]

    def infer(self, case: InferenceCase, count: int) -> Counter[str]:
        """`count` inference requests through nginx, each checked; how often each upstream list was reported."""
        served: Counter[str] = Counter()
        for _ in range(count):
            status, headers, body = http("POST", f"{self.url}/v2/models/{case.model}/infer", case.request)
            assert status == 200, body
            case.check(json.loads(body))
            served[headers["X-Bnfold-Upstream"]] += 1
        return served

    def counts(self, model: str) -> list[float]:
        return [replica.served_requests(model) for replica in self.replicas]


@pytest.fixture(scope="module")
def cluster(
    runtime: StageEnvironment, default_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("lb")
    port = free_port(*REPLICA_HOSTS)
    replicas = [Replica(runtime, default_repository, host, port, logs / f"{host}.log") for host in REPLICA_HOSTS]
    dns = LoopbackDns("api", list(REPLICA_HOSTS))
    try:
        for replica in replicas:
            replica.wait_ready()
        values = {
            "NGINX_PORT": f"127.0.0.1:{free_port('127.0.0.1')}",
            "NGINX_RESOLVER": f"127.0.0.1:{dns.port}",
            "NGINX_RESOLVER_VALID": f"{RESOLVER_VALID_SECONDS}s",
            "BNFOLD_UPSTREAM": f"api:{port}",
            "NGINX_MAX_BODY": "64m",
        }
        with NginxProcess(logs / "nginx", values) as nginx:
            yield Cluster(replicas, dns, nginx)
    finally:
        for replica in replicas:
            replica.stop()
        dns.close()


def test_requests_reach_both_replicas(cluster: Cluster, case: InferenceCase) -> None:
    before = cluster.counts(case.model)
    served = cluster.infer(case, 40)
    assert set(served) == set(cluster.addresses(*cluster.replicas))  # nginx used both, each on the first try
    after = cluster.counts(case.model)
    per_replica = [end - start for start, end in zip(before, after, strict=True)]
    assert per_replica == [served[address] for address in cluster.addresses(*cluster.replicas)]
    assert sum(per_replica) == 40 and min(per_replica) > 0


def test_a_replica_added_to_dns_gets_traffic_without_reloading_nginx(cluster: Cluster, case: InferenceCase) -> None:
    """What `docker compose up --scale api=N` relies on: nginx re-resolves `api` every NGINX_RESOLVER_VALID."""
    first, second = cluster.replicas
    cluster.dns.addresses = [first.host]
    time.sleep(RESOLVER_REFRESH_SECONDS)
    assert set(cluster.infer(case, 10)) == set(cluster.addresses(first))
    cluster.dns.addresses = [first.host, second.host]
    time.sleep(RESOLVER_REFRESH_SECONDS)
    assert set(cluster.infer(case, 30)) == set(cluster.addresses(first, second))


def test_a_stopped_replica_is_routed_around_then_none_left_is_a_json_503(cluster: Cluster, case: InferenceCase) -> None:
    stopped, alive = cluster.replicas
    stopped.stop()
    alive_before = alive.served_requests(case.model)
    served = cluster.infer(case, 20)  # every request answered, though DNS still lists the stopped replica
    retried = ", ".join(cluster.addresses(stopped, alive))
    assert set(served) <= {retried, *cluster.addresses(alive)} and retried in served
    assert alive.served_requests(case.model) - alive_before == 20

    alive.stop()
    status, headers, body = http("POST", f"{cluster.url}/v2/models/{case.model}/infer", case.request)
    assert status == 503 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "error": "no bnfold replica answered; check that the api service is up (docker compose ps api) "
        "and read its logs (docker compose logs api)"
    }
