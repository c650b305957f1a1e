"""deploy/kubernetes/: the sidecar beside a legacy server in one Pod, and its Service.

There is no cluster here.  The manifests are validated offline against the
Kubernetes 1.30 OpenAPI schemas (``kubernetes-validate``, strict: an unknown
field fails), then read for what the README promises: probes on
``/.hopgate/ready`` and ``/.hopgate/live``, a ``preStop`` sleep and a
termination grace above it plus ``--shutdown-grace``, a legacy container
that outlives the sidecar's drain, configuration by ``HOPGATE_`` variables
that are all real settings, the hop secret from a mounted Secret, a
non-root read-only container.  Finally the sidecar's environment is given to
a real gateway process (its addresses moved to loopback, the Secret's file a
temporary one) and the probes' paths are asked on the probes' port.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from gateway import __version__
from gateway.config import SETTINGS
from tests.conftest import MakeOrigin
from tests.packaged import ROOT, clean_env
from tests.processes import ChildProcess, free_port

MANIFESTS = ROOT / "deploy" / "kubernetes"
#: The oldest Kubernetes the example is for: the preStop ``sleep`` action is on from 1.30.
KUBERNETES = "1.30"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


def resource(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents() if doc["kind"] == kind]
    return found


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    (found,) = [c for c in pod()["containers"] if c["name"] == name]
    return found


def env(name: str) -> dict[str, str]:
    """A container's variables with a ``value`` (``$(VAR)`` references left as written)."""
    return {
        item["name"]: item["value"] for item in container(name).get("env", []) if "value" in item
    }


def downward(name: str) -> dict[str, str]:
    """A container's variables from the downward API: name -> field path."""
    return {
        item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"]
        for item in container(name).get("env", [])
        if "fieldRef" in item.get("valueFrom", {})
    }


def expanded(variables: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """``$(VAR)`` references replaced as the kubelet does, from ``given`` then ``variables``."""
    known = {**variables, **given}
    return {
        name: re.sub(r"\$\((\w+)\)", lambda m: known.get(m.group(1), m.group(0)), value)
        for name, value in variables.items()
    }


def port_number(spec: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in spec["ports"] if p["name"] == port]
    return int(number)


def setting_variables() -> set[str]:
    options = {setting.option for setting in SETTINGS} | {"--listen", "--upstream", "--config"}
    return {"HOPGATE_" + option[2:].upper().replace("-", "_") for option in options}


# ----------------------------------------------------------------- schema


def test_every_manifest_is_valid_kubernetes_strictly() -> None:
    kinds = []
    for doc in documents():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "Service"]


def test_the_validation_can_fail() -> None:
    deployment = resource("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][1]["readinessProbe"]["httpGet"]["pth"] = (
        "/"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


# --------------------------------------------------------------- the Pod


def test_the_sidecar_is_configured_by_variables_that_are_settings() -> None:
    sidecar = container("hopgate")
    assert sidecar["image"] == f"hopgate:{__version__}"
    assert sidecar["args"] == ["server"]
    variables = env("hopgate")
    assert set(variables) <= setting_variables(), set(variables) - setting_variables()
    # The one variable that is not a setting: the Pod IP, for HOPGATE_ADVERTISE.
    assert downward("hopgate") == {"POD_IP": "status.podIP"}
    assert variables["HOPGATE_UPSTREAM"] == "http://127.0.0.1:9000"
    assert variables["HOPGATE_LISTEN"] == "0.0.0.0:8080"
    assert "HOPGATE_HOP_SECRET" not in variables  # the secret comes from a file


def test_the_hop_secret_is_a_mounted_secret_file() -> None:
    secret_file = Path(env("hopgate")["HOPGATE_HOP_SECRET_FILE"])
    (mount,) = [m for m in container("hopgate")["volumeMounts"] if m["name"] == "hop-secret"]
    assert mount["readOnly"] is True
    assert secret_file.parent == Path(mount["mountPath"])
    (volume,) = [v for v in pod()["volumes"] if v["name"] == "hop-secret"]
    assert [item["path"] for item in volume["secret"]["items"]] == [secret_file.name]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the secret is world-readable"


def test_the_sidecars_form_one_cluster_advertising_their_pod_ip() -> None:
    """Every replica has the cluster secret from a Secret and advertises its Pod IP."""
    variables = env("hopgate")
    assert "HOPGATE_CLUSTER_SECRET" not in variables  # the secret comes from a file
    secret_file = Path(variables["HOPGATE_CLUSTER_SECRET_FILE"])
    (mount,) = [m for m in container("hopgate")["volumeMounts"] if m["name"] == "cluster-secret"]
    assert mount["readOnly"] is True and secret_file.parent == Path(mount["mountPath"])
    (volume,) = [v for v in pod()["volumes"] if v["name"] == "cluster-secret"]
    assert [item["path"] for item in volume["secret"]["items"]] == [secret_file.name]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the secret is world-readable"
    listen_port = variables["HOPGATE_LISTEN"].rpartition(":")[2]
    assert variables["HOPGATE_ADVERTISE"] == f"http://$(POD_IP):{listen_port}"
    # $(POD_IP) expands only if POD_IP is defined before it in the list.
    names = [item["name"] for item in container("hopgate")["env"]]
    assert names.index("POD_IP") < names.index("HOPGATE_ADVERTISE")


def test_probes_ask_ready_and_live_on_the_admin_listener() -> None:
    sidecar = container("hopgate")
    admin_port = int(env("hopgate")["HOPGATE_ADMIN_LISTEN"].rpartition(":")[2])
    ready, live = sidecar["readinessProbe"]["httpGet"], sidecar["livenessProbe"]["httpGet"]
    assert (ready["path"], live["path"]) == ("/.hopgate/ready", "/.hopgate/live")
    assert port_number(sidecar, ready["port"]) == port_number(sidecar, live["port"]) == admin_port
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(admin_port)
    assert annotations["prometheus.io/path"] == "/.hopgate/metrics"


def test_termination_gives_the_pod_its_prestop_and_the_gateway_its_grace() -> None:
    grace = float(env("hopgate")["HOPGATE_SHUTDOWN_GRACE"])
    sidecar_sleep = container("hopgate")["lifecycle"]["preStop"]["sleep"]["seconds"]
    legacy_sleep = container("legacy")["lifecycle"]["preStop"]["sleep"]["seconds"]
    total = pod()["terminationGracePeriodSeconds"]
    assert sidecar_sleep > 0 and sidecar_sleep + grace < total
    # The legacy server gets SIGTERM only once the sidecar's drain is over.
    assert sidecar_sleep + grace <= legacy_sleep < total


def test_containers_run_non_root_read_only_with_bounded_resources() -> None:
    security = pod()["securityContext"]
    assert security["runAsNonRoot"] is True
    image_user = re.search(r"^USER (\d+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert image_user is not None and security["runAsUser"] == int(image_user.group(1))
    for spec in pod()["containers"]:
        context = spec["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, spec["name"]
        assert context["allowPrivilegeEscalation"] is False, spec["name"]
        assert context["capabilities"]["drop"] == ["ALL"], spec["name"]
        assert {"cpu", "memory"} <= set(spec["resources"]["requests"]), spec["name"]
        assert "memory" in spec["resources"]["limits"], spec["name"]


def test_the_service_sends_to_the_sidecar_without_affinity() -> None:
    service = resource("Service")["spec"]
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    (port,) = service["ports"]
    sidecar = container("hopgate")
    listen_port = int(env("hopgate")["HOPGATE_LISTEN"].rpartition(":")[2])
    assert port_number(sidecar, port["targetPort"]) == listen_port
    # The sidecars pass a session's requests to its owner: no affinity needed.
    assert service.get("sessionAffinity", "None") == "None"


# ------------------------------------------------------------ run its env


@pytest.mark.timeout(60)
async def test_a_gateway_with_the_sidecars_environment_answers_its_probes(
    tmp_path: Path, make_origin: MakeOrigin
) -> None:
    async def legacy(request: web.Request) -> web.Response:
        return web.Response(text="legacy")

    origin = await make_origin(legacy)
    secret = tmp_path / "hop-secret"
    secret.write_text("s3cret-from-a-kubernetes-secret\n")
    cluster_secret = tmp_path / "cluster-secret"
    cluster_secret.write_text("another-s3cret-from-a-kubernetes-secret\n")
    os.chmod(secret, 0o440)
    os.chmod(cluster_secret, 0o440)
    port, admin = free_port(), free_port()
    variables = {
        **expanded(env("hopgate"), {"POD_IP": "127.0.0.1"}),
        "HOPGATE_UPSTREAM": origin,
        "HOPGATE_LISTEN": f"127.0.0.1:{port}",
        "HOPGATE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "HOPGATE_HOP_SECRET_FILE": str(secret),
        "HOPGATE_CLUSTER_SECRET_FILE": str(cluster_secret),
    }
    assert variables["HOPGATE_ADVERTISE"] == "http://127.0.0.1:8080"
    argv = [sys.executable, "-m", "gateway", *container("hopgate")["args"]]
    gw = ChildProcess.start(argv, name="sidecar", env={**clean_env(), **variables}, cwd=ROOT)
    try:
        await asyncio.to_thread(gw.wait_accepting, admin)
        await asyncio.to_thread(gw.wait_accepting, port)
        probes = container("hopgate")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for probe in ("readinessProbe", "livenessProbe"):
                path = probes[probe]["httpGet"]["path"]
                async with session.get(f"http://127.0.0.1:{admin}{path}") as resp:
                    assert resp.status == 200, (probe, await resp.text(), gw.output())
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert (resp.status, await resp.text()) == (200, "legacy")
            # It runs as a cluster member that names the advertised address.
            async with session.get(f"http://127.0.0.1:{admin}/.hopgate/status") as resp:
                cluster = (await resp.json())["cluster"]
            assert cluster["advertise"] == variables["HOPGATE_ADVERTISE"], cluster
    finally:
        status = await asyncio.to_thread(gw.stop)
    assert status == 0, gw.output()
    # HOPGATE_LOG_FORMAT=json took: the startup lines are JSON objects.
    first = json.loads(gw.lines[0])
    assert {"time", "level", "event"} <= set(first), gw.output()


def test_the_readme_names_real_variables_and_existing_files() -> None:
    readme = (MANIFESTS / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\bHOPGATE_[A-Z_]+\b", readme))
    assert named and named <= setting_variables(), named - setting_variables()
    for path in re.findall(r"`((?:deploy|docs)/[\w/.-]+)`", readme):
        assert (ROOT / path).exists(), path
