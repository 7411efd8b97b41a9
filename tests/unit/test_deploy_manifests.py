"""deploy/: every Kubernetes manifest validates strictly against a fixed Kubernetes version's schemas
(kubernetes-validate), and the pieces fit: probes on Triton's health endpoints, a headless cloud Service the edge
resolves, Envoy's ring hash on the stream header for HTTP and gRPC, the scrape config on the metrics port."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from client.sharding import STREAM_HEADER

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.33.0"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _resources() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in _documents(path)}


def test_there_are_manifests():
    assert {p.name for p in MANIFESTS} >= {"cloud.yaml", "edge.yaml", "envoy.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_validates_strictly(path):
    documents = _documents(path)
    assert documents
    for document in documents:
        # Raises ValidationError naming the field on a typo or a wrong type (strict: unknown fields too).
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    deployment = _resources()[("Deployment", "spotvlm-cloud")]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _container(resource: dict) -> dict:
    (container,) = resource["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("kind, name", [("Deployment", "spotvlm-cloud"), ("StatefulSet", "spotvlm-edge")])
def test_triton_pods_probe_health_and_request_resources(kind, name):
    resource = _resources()[(kind, name)]
    assert resource["spec"]["replicas"] >= 2
    container = _container(resource)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    repository = "cloud" if "cloud" in name else "edge"
    assert container["args"] == [f"--model-repository=/opt/spotvlm/model_repository/{repository}"]


def test_the_edge_resolves_every_cloud_replica_through_a_headless_service():
    resources = _resources()
    cloud_service = resources[("Service", "spotvlm-cloud")]
    assert cloud_service["spec"]["clusterIP"] == "None"
    cloud_pods = resources[("Deployment", "spotvlm-cloud")]["spec"]["template"]["metadata"]["labels"]
    assert cloud_service["spec"]["selector"].items() <= cloud_pods.items()
    env = {e["name"]: e["value"] for e in _container(resources[("StatefulSet", "spotvlm-edge")])["env"]}
    assert env["SPOTVLM_CLOUD_URL"] == "dns:///spotvlm-cloud:8001"
    edge = resources[("StatefulSet", "spotvlm-edge")]
    assert edge["spec"]["serviceName"] == "spotvlm-edge"
    assert resources[("Service", "spotvlm-edge")]["spec"]["clusterIP"] == "None"


def test_envoy_hashes_the_stream_header_for_http_and_grpc():
    config = yaml.safe_load((DEPLOY / "envoy.yaml").read_text(encoding="utf-8"))
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    listeners = config["static_resources"]["listeners"]
    assert len(listeners) == 2
    for listener in listeners:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
        assert route["route"]["hash_policy"] == [{"header": {"header_name": STREAM_HEADER}}]
        cluster = clusters[route["route"]["cluster"]]
        assert cluster["lb_policy"] == "RING_HASH"
        assert cluster["health_checks"][0]["http_health_check"]["path"] == "/v2/health/ready"
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"]["address"] == "spotvlm-edge"
    ports = {c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0] for c in clusters.values()}
    assert ports["edge_http"]["endpoint"]["address"]["socket_address"]["port_value"] == 8000
    assert ports["edge_grpc"]["endpoint"]["address"]["socket_address"]["port_value"] == 8001
    assert "http2_protocol_options" in str(clusters["edge_grpc"]["typed_extension_protocol_options"])


def test_kustomization_and_scrape_config_fit_the_manifests():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == sorted(f"k8s/{p.name}" for p in MANIFESTS)
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    for files in generated.values():
        assert all((DEPLOY / f).is_file() for f in files)
    envoy = _resources()[("Deployment", "spotvlm-envoy")]
    assert envoy["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] in generated
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = prometheus["scrape_configs"]
    keeps = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics"
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_part_of",)] == "spotvlm"


def test_the_image_is_built_on_tritons_container():
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "nvcr.io/nvidia/tritonserver:" in dockerfile
    assert "build_engines.sh" in dockerfile
