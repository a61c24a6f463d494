"""The deploy files in cluster/ (and the Dockerfile) are valid for whatever reads them, and agree with each
other and with this repo.

- *Kubernetes and KubeRay manifests* are checked against a compact transcription of their schemas: at every
  level these manifests use, the known field names (an unknown one is an error, as with `kubectl apply
  --validate=strict`), the required ones and the types. The KubeRay part follows the ray.io/v1 CRDs of
  KubeRay 1.6, the first release with RayCronJob; later releases only add fields, so what passes here
  applies on 1.6 and later. Pod templates are checked as core/v1 pods to the depth these files go.
- *The cluster-launcher config* is validated with the JSON schema Ray itself ships (ray-schema.json).
- *The IAM policies* must be least privilege: no wildcard actions or resources, S3 listing only under
  prefixes, and they must allow exactly the prefixes the manifests read and write.
- *Locked down* (issue 21, item 7): Ray token authentication from a Secret on every Ray container, a
  NetworkPolicy that lets only the workers, the KubeRay operator and the submitter reach a head, a
  restricted securityContext on every container with emptyDirs where Ray writes, no service-account token
  where a pod does not call the API, and the image named once (kustomization.yaml).
- *Cross-checks*: one image everywhere, and it is the one the Dockerfile builds; every `python jobs/X.py`
  exists, answers --help, and accepts the flags the manifests pass; the nightly ConfigMap holds a config
  the nightly job accepts; referenced ConfigMaps, service accounts and the head service exist.

No network, no cluster, no Docker daemon: only files and `python jobs/X.py --help` subprocesses.
"""
from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "cluster-launcher.yaml"
KUSTOMIZE = (CLUSTER / "kustomization.yaml", CLUSTER / "kustomizeconfig.yaml")  # kustomize's, not Kubernetes'
IMAGE_NAME = "ood-audit"  # what the manifests say; kustomization.yaml's images: entry turns it into IMAGE
TOKEN_SECRET = {"name": "ood-audit-ray-token", "key": "auth_token"}
RESTRICTED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}, "readOnlyRootFilesystem": True}
WRITABLE = {"/tmp", "/home/ray/.cache", "/dev/shm"}  # where Ray and its libraries write (the rest is read-only)
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/example/ood-audit:{VERSION}"
RAY_VERSION = "2.60.0"
BUCKETS = {"my-datasets", "my-audit"}


# ---- a small structural schema language -------------------------------------------------------------

@dataclass(frozen=True)
class Obj:
    fields: dict[str, Any]
    required: frozenset[str] = frozenset()
    open: bool = False                      # True: names beyond `fields` are allowed (not modelled here)


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class MapOf:
    value: Any


@dataclass(frozen=True)
class OneOf:
    values: tuple[str, ...]


ANY, NUMBER = object(), (int, float)
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


def errors(value: Any, schema: Any, at: str) -> Iterator[str]:
    if schema is ANY:
        return
    if schema == "quantity":
        if isinstance(value, bool) or not (isinstance(value, int) or QUANTITY.match(str(value))):
            yield f"{at}: {value!r} is not a Kubernetes quantity"
    elif isinstance(schema, OneOf):
        if value not in schema.values:
            yield f"{at}: {value!r} is not one of {schema.values}"
    elif isinstance(schema, Obj):
        if not isinstance(value, dict):
            yield f"{at}: expected a mapping, got {type(value).__name__}"
            return
        for name in sorted(schema.required - value.keys()):
            yield f"{at}.{name}: required field missing"
        for name, sub in value.items():
            if name in schema.fields:
                yield from errors(sub, schema.fields[name], f"{at}.{name}")
            elif not schema.open:
                yield f"{at}.{name}: unknown field"
    elif isinstance(schema, ListOf):
        if not isinstance(value, list):
            yield f"{at}: expected a list, got {type(value).__name__}"
            return
        for i, sub in enumerate(value):
            yield from errors(sub, schema.item, f"{at}[{i}]")
    elif isinstance(schema, MapOf):
        if not isinstance(value, dict):
            yield f"{at}: expected a mapping, got {type(value).__name__}"
            return
        for k, sub in value.items():
            yield from errors(sub, schema.value, f"{at}.{k}")
    else:  # a Python type (or tuple of types); YAML's true/false must not pass for an integer
        if isinstance(value, bool) and schema is not bool or not isinstance(value, schema):
            yield f"{at}: expected {getattr(schema, '__name__', schema)}, got {value!r}"


def obj(required: str = "", open: bool = False, **fields: Any) -> Obj:
    return Obj(fields, frozenset(required.split()), open)


# ---- core/v1 and batch/v1, to the depth these manifests use --------------------------------------------

STRINGS = MapOf(str)
META = obj("name", name=str, namespace=str, labels=STRINGS, annotations=STRINGS)
RESOURCES = obj(limits=MapOf("quantity"), requests=MapOf("quantity"), claims=ANY)
REF = obj("name", name=str, optional=bool)
SECURITY_CONTEXT = obj(runAsNonRoot=bool, runAsUser=int, runAsGroup=int, allowPrivilegeEscalation=bool,
                       readOnlyRootFilesystem=bool, privileged=bool,
                       capabilities=obj(drop=ListOf(str), add=ListOf(str)),
                       seccompProfile=obj("type", type=OneOf(("RuntimeDefault", "Localhost", "Unconfined")),
                                          localhostProfile=str),
                       **{k: ANY for k in "appArmorProfile procMount seLinuxOptions windowsOptions".split()})
CONTAINER = obj(
    "name", name=str, image=str, command=ListOf(str), args=ListOf(str), workingDir=str,
    env=ListOf(obj("name", name=str, value=str, valueFrom=ANY)),
    envFrom=ListOf(obj(configMapRef=REF, secretRef=REF, prefix=str)),
    ports=ListOf(obj("containerPort", containerPort=int, name=str, protocol=OneOf(("TCP", "UDP", "SCTP")),
                     hostIP=str, hostPort=int)),
    resources=RESOURCES,
    volumeMounts=ListOf(obj("name mountPath", name=str, mountPath=str, readOnly=bool, subPath=str,
                            subPathExpr=str, mountPropagation=str, recursiveReadOnly=str)),
    imagePullPolicy=OneOf(("Always", "IfNotPresent", "Never")), securityContext=SECURITY_CONTEXT,
    **{k: ANY for k in ("lifecycle livenessProbe readinessProbe startupProbe resizePolicy restartPolicy "
                        "stdin stdinOnce terminationMessagePath terminationMessagePolicy "
                        "tty volumeDevices").split()})
VOLUME = obj("name", open=True, name=str,
             configMap=obj("name", name=str, items=ANY, defaultMode=int, optional=bool),
             emptyDir=obj(medium=str, sizeLimit="quantity"))
POD_SPEC = obj(
    "containers", containers=ListOf(CONTAINER), initContainers=ListOf(CONTAINER), volumes=ListOf(VOLUME),
    serviceAccountName=str, automountServiceAccountToken=bool, nodeSelector=STRINGS,
    restartPolicy=OneOf(("Always", "OnFailure", "Never")),
    securityContext=obj(open=True, runAsNonRoot=bool, runAsUser=int, runAsGroup=int, fsGroup=int),
    tolerations=ListOf(obj(key=str, operator=OneOf(("Exists", "Equal")), value=str, tolerationSeconds=int,
                           effect=OneOf(("NoSchedule", "PreferNoSchedule", "NoExecute")))),
    **{k: ANY for k in ("activeDeadlineSeconds affinity dnsConfig dnsPolicy enableServiceLinks "
                        "ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostUsers hostname "
                        "imagePullSecrets nodeName os overhead preemptionPolicy priority priorityClassName "
                        "readinessGates resourceClaims resources runtimeClassName schedulerName "
                        "schedulingGates serviceAccount setHostnameAsFQDN shareProcessNamespace subdomain "
                        "terminationGracePeriodSeconds topologySpreadConstraints").split()})
POD_TEMPLATE = obj("spec", metadata=obj(open=True, labels=STRINGS, annotations=STRINGS), spec=POD_SPEC)
JOB_SPEC = obj("template", template=POD_TEMPLATE, activeDeadlineSeconds=int, backoffLimit=int,
               ttlSecondsAfterFinished=int, completions=int, parallelism=int, suspend=bool,
               **{k: ANY for k in ("backoffLimitPerIndex completionMode managedBy manualSelector "
                                   "maxFailedIndexes podFailurePolicy podReplacementPolicy selector "
                                   "successPolicy").split()})
CRONJOB_SPEC = obj("schedule jobTemplate", schedule=str, timeZone=str,
                   concurrencyPolicy=OneOf(("Allow", "Forbid", "Replace")), startingDeadlineSeconds=int,
                   successfulJobsHistoryLimit=int, failedJobsHistoryLimit=int, suspend=bool,
                   jobTemplate=obj("spec", metadata=ANY, spec=JOB_SPEC))

# ---- ray.io/v1 (KubeRay 1.6 CRDs: ray.io_rayclusters, ray.io_rayjobs, ray.io_raycronjobs) -----------

HEAD_GROUP = obj("template", template=POD_TEMPLATE, rayStartParams=STRINGS, enableIngress=bool,
                 headService=ANY, labels=STRINGS, resources=STRINGS, serviceType=str)
WORKER_GROUP = obj("groupName minReplicas maxReplicas template", groupName=str, replicas=int,
                   minReplicas=int, maxReplicas=int, numOfHosts=int, idleTimeoutSeconds=int,
                   rayStartParams=STRINGS, template=POD_TEMPLATE, labels=STRINGS, resources=STRINGS,
                   scaleStrategy=ANY, suspend=bool)
AUTOSCALER = obj(upscalingMode=OneOf(("Default", "Aggressive", "Conservative")), idleTimeoutSeconds=int,
                 version=OneOf(("v1", "v2")), image=str, imagePullPolicy=str, resources=RESOURCES,
                 env=ANY, envFrom=ANY, securityContext=SECURITY_CONTEXT, volumeMounts=ANY)
RAY_CLUSTER_SPEC = obj("headGroupSpec", headGroupSpec=HEAD_GROUP, workerGroupSpecs=ListOf(WORKER_GROUP),
                       rayVersion=str, enableInTreeAutoscaling=bool, autoscalerOptions=AUTOSCALER,
                       headServiceAnnotations=STRINGS, suspend=bool, managedBy=str,
                       authOptions=obj(mode=OneOf(("disabled", "token")), secretName=str, enableK8sTokenAuth=bool),
                       gcsFaultToleranceOptions=ANY, upgradeStrategy=ANY)
RAY_JOB_SPEC = obj(entrypoint=str, runtimeEnvYAML=str, rayClusterSpec=RAY_CLUSTER_SPEC,
                   shutdownAfterJobFinishes=bool, ttlSecondsAfterFinished=int, backoffLimit=int,
                   activeDeadlineSeconds=int, preRunningDeadlineSeconds=int, entrypointNumCpus=NUMBER,
                   entrypointNumGpus=NUMBER, entrypointResources=str, jobId=str, suspend=bool,
                   submissionMode=OneOf(("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")),
                   clusterSelector=STRINGS, metadata=STRINGS, managedBy=str, deletionStrategy=ANY,
                   submitterConfig=ANY, submitterPodTemplate=POD_TEMPLATE)
RAY_CRON_JOB_SPEC = obj("schedule jobTemplate", schedule=str, jobTemplate=RAY_JOB_SPEC, suspend=bool)

PEER = obj(podSelector=obj(matchLabels=STRINGS, matchExpressions=ANY),
           namespaceSelector=obj(matchLabels=STRINGS, matchExpressions=ANY), ipBlock=ANY)
NETWORK_POLICY_SPEC = obj("podSelector", podSelector=obj(matchLabels=STRINGS, matchExpressions=ANY),
                          policyTypes=ListOf(OneOf(("Ingress", "Egress"))),
                          ingress=ListOf(obj(**{"from": ListOf(PEER)},
                                             ports=ListOf(obj(protocol=OneOf(("TCP", "UDP", "SCTP")), port=int,
                                                              endPort=int)))),
                          egress=ANY)

SPECS = {("networking.k8s.io/v1", "NetworkPolicy"): NETWORK_POLICY_SPEC,
         ("ray.io/v1", "RayCluster"): RAY_CLUSTER_SPEC, ("ray.io/v1", "RayJob"): RAY_JOB_SPEC,
         ("ray.io/v1", "RayCronJob"): RAY_CRON_JOB_SPEC, ("batch/v1", "CronJob"): CRONJOB_SPEC}
TOP = {("v1", "ConfigMap"): obj("apiVersion kind metadata data", apiVersion=str, kind=str, metadata=META,
                                data=STRINGS, immutable=bool),
       ("v1", "ServiceAccount"): obj("apiVersion kind metadata", apiVersion=str, kind=str, metadata=META,
                                     automountServiceAccountToken=bool, imagePullSecrets=ANY)}
TOP |= {key: obj("apiVersion kind metadata spec", apiVersion=str, kind=str, metadata=META, spec=spec)
        for key, spec in SPECS.items()}


# ---- loading ------------------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; kubectl rejects the manifest. So do we."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dupes)}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> list:
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]


def _manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(CLUSTER.glob("*.yaml")):
        if path != LAUNCHER and path not in KUSTOMIZE:
            docs = load_yaml(path.read_text())
            out += [(f"{path.name}#{i}" if len(docs) > 1 else path.name, d) for i, d in enumerate(docs)]
    return out


MANIFESTS = _manifests()


def of_kind(kind: str) -> list[dict]:
    return [d for _, d in MANIFESTS if d.get("kind") == kind]


def ray_cluster_specs() -> Iterator[tuple[str, dict]]:
    for d in of_kind("RayCluster"):
        yield d["metadata"]["name"], d["spec"]
    for d in of_kind("RayJob"):
        yield d["metadata"]["name"], d["spec"]["rayClusterSpec"]
    for d in of_kind("RayCronJob"):
        yield d["metadata"]["name"], d["spec"]["jobTemplate"]["rayClusterSpec"]


def kuberay_docs() -> list[dict]:
    return of_kind("RayCluster") + of_kind("RayJob") + of_kind("RayCronJob")


def pod_specs() -> Iterator[dict]:
    for _, c in ray_cluster_specs():
        yield c["headGroupSpec"]["template"]["spec"]
        yield from (g["template"]["spec"] for g in c.get("workerGroupSpecs", []))
    for d in of_kind("CronJob"):
        yield d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def entrypoints() -> list[list[str]]:
    """Every command line that runs a job script, as argv from `python` on."""
    lines = [shlex.split(d["spec"]["entrypoint"]) for d in of_kind("RayJob")]
    lines += [shlex.split(d["spec"]["jobTemplate"]["entrypoint"]) for d in of_kind("RayCronJob")]
    for d in of_kind("CronJob"):
        for c in d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
            argv = c.get("command", []) + c.get("args", [])
            lines.append(argv[argv.index("--") + 1:] if "--" in argv else argv)
    return lines


# ---- the manifests against their schemas ----------------------------------------------------------------

def test_every_file_there_and_listed_in_the_readme():
    names = {p.name for p in CLUSTER.iterdir()} - {"README.md"}
    assert {"raycluster.yaml", "rayjob-train.yaml", "rayjob-calibrate.yaml", "raycronjob-nightly.yaml",
            "nightly-config.yaml", "cronjob-fallback.yaml", "cluster-launcher.yaml", "iam-policy.json"} <= names
    readme = (CLUSTER / "README.md").read_text()
    assert not [n for n in sorted(names) if f"`{n}`" not in readme], "cluster/README.md's table misses files"


@pytest.mark.parametrize("where,doc", MANIFESTS, ids=[w for w, _ in MANIFESTS])
def test_manifest_matches_its_schema(where, doc):
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in TOP, f"{where}: unexpected apiVersion/kind {key}"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), "not a DNS-1123 name"
    problems = list(errors(doc, TOP[key], key[1]))
    assert not problems, f"{where}:\n  " + "\n  ".join(problems)
    if key[1] in ("RayJob", "RayCronJob"):  # both optional in the CRD (a job may use an existing cluster)
        job = doc["spec"] if key[1] == "RayJob" else doc["spec"]["jobTemplate"]
        assert job.get("entrypoint", "").startswith("python jobs/") and "rayClusterSpec" in job


@pytest.mark.parametrize("name,spec", list(ray_cluster_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_cluster_spec(name, spec):
    assert spec["rayVersion"] == RAY_VERSION and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "work must land on workers, not the head"
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    gpu_groups = [g for g in groups if "nvidia.com/gpu" in _limits(g)]
    assert gpu_groups, f"{name}: no GPU worker group"
    for g in groups:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
        assert all(c["resources"]["requests"] == c["resources"]["limits"] for c in g["template"]["spec"]["containers"])
    for g in gpu_groups:
        pod = g["template"]["spec"]
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), g["groupName"]
        assert pod.get("nodeSelector"), f"{g['groupName']}: GPU pods need a GPU node selector"
    if name == "ood-audit":  # the long-running cluster scales its GPUs from zero
        assert all(g["minReplicas"] == 0 for g in gpu_groups)


def _limits(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_pods_run_as_the_image_user_and_reference_what_exists():
    config_maps = {d["metadata"]["name"]: d for d in of_kind("ConfigMap")}
    accounts = {d["metadata"]["name"] for d in of_kind("ServiceAccount")}
    for pod in pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert pod.get("serviceAccountName", next(iter(accounts))) in accounts
        for v in pod.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, v
        mounted = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert mounted <= {v["name"] for v in pod.get("volumes", [])}


def test_nightly_raycronjob_reads_its_config_from_the_configmap():
    (cron,) = of_kind("RayCronJob")
    assert "concurrencyPolicy" not in cron["spec"], "RayCronJob has no concurrencyPolicy"
    argv = shlex.split(cron["spec"]["jobTemplate"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/nightly.py"]
    head_pod = cron["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    _assert_config_mounted(argv[argv.index("--config") + 1], head_pod)


def test_cronjob_fallback_submits_to_the_long_running_cluster():
    (cron,) = of_kind("CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    argv = pod["containers"][0]["command"]
    assert argv[:3] == ["ray", "job", "submit"] and "--no-wait" not in argv, "Forbid needs a blocking submit"
    (cluster,) = of_kind("RayCluster")
    assert argv[argv.index("--address") + 1] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    job = argv[argv.index("--") + 1:]
    assert job[:2] == ["python", "jobs/nightly.py"]
    _assert_config_mounted(job[job.index("--config") + 1], cluster["spec"]["headGroupSpec"]["template"]["spec"])


def _assert_config_mounted(config_path: str, head_pod: dict) -> None:
    """The driver runs on the head: the config file must be a key of a ConfigMap mounted there."""
    volumes = {v["name"]: v for v in head_pod["volumes"]}
    for m in head_pod["containers"][0]["volumeMounts"]:
        if config_path.startswith(m["mountPath"].rstrip("/") + "/") and "configMap" in volumes[m["name"]]:
            (cm,) = [d for d in of_kind("ConfigMap")
                     if d["metadata"]["name"] == volumes[m["name"]]["configMap"]["name"]]
            assert config_path[len(m["mountPath"].rstrip("/")) + 1:] in cm["data"]
            return
    pytest.fail(f"{config_path} is not in a ConfigMap mounted on the head")


# ---- one image, entrypoints that exist -------------------------------------------------------------------

def test_every_image_is_the_one_the_dockerfile_builds():
    """The image is named once, in kustomization.yaml; every manifest says ``ood-audit`` and kustomize's
    image paths reach every container (kustomizeconfig.yaml for the KubeRay kinds)."""
    kustomization = load_yaml(KUSTOMIZE[0].read_text())[0]
    (entry,) = kustomization["images"]
    assert entry["name"] == IMAGE_NAME and f"{entry['newName']}:{entry['newTag']}" == IMAGE
    assert sorted(kustomization["resources"]) == sorted({w.split("#")[0] for w, _ in MANIFESTS})
    assert {c["image"] for pod in pod_specs() for c in pod["containers"]} == {IMAGE_NAME}
    assert load_yaml(LAUNCHER.read_text())[0]["docker"]["image"] == IMAGE  # not Kubernetes: named in full
    reached = 0
    for spec in load_yaml(KUSTOMIZE[1].read_text())[0]["images"]:
        for doc in of_kind(spec["kind"]):
            reached += sum(1 for image in _at(doc, spec["path"].split("/")) if image == IMAGE_NAME)
    in_kuberay = sum(len(g["template"]["spec"]["containers"]) for _, c in ray_cluster_specs()
                     for g in [c["headGroupSpec"], *c.get("workerGroupSpecs", [])])
    assert reached == in_kuberay, "kustomizeconfig.yaml misses a KubeRay container"
    if shutil.which("kubectl"):  # renders offline; not on every machine
        rendered = load_yaml(subprocess.run(["kubectl", "kustomize", str(CLUSTER)], capture_output=True, text=True,
                                            check=True, timeout=120).stdout)
        images = re.findall(r"'image': '([^']+)'", repr(rendered))
        assert images and set(images) == {IMAGE}
    labels = " ".join(i.args for i in dockerfile() if i.name == "LABEL")
    assert f'org.opencontainers.image.version="{VERSION}"' in labels
    assert f"docker build -t {IMAGE} ." in (ROOT / "Dockerfile").read_text()


def _at(node: Any, parts: list[str]) -> Iterator[Any]:
    """The values at a kustomize field path (``a/b[]/c``: every item of list b)."""
    if not parts:
        yield node
        return
    key, many = parts[0].removesuffix("[]"), parts[0].endswith("[]")
    if isinstance(node, dict) and key in node:
        for item in (node[key] if many else [node[key]]):
            yield from _at(item, parts[1:])


def test_every_runtime_env_uses_the_image_working_dir():
    workdir = [i.args for i in dockerfile() if i.name == "WORKDIR"][-1]
    envs = [d["spec"]["runtimeEnvYAML"] for d in of_kind("RayJob")]
    envs += [d["spec"]["jobTemplate"]["runtimeEnvYAML"] for d in of_kind("RayCronJob")]
    assert envs and all(yaml.safe_load(e)["working_dir"] == workdir for e in envs)
    for d in of_kind("CronJob"):
        argv = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
        assert argv[argv.index("--working-dir") + 1] == workdir


SCRIPTS = sorted({argv[1] for argv in entrypoints()})
NIGHTLY_PENDING = pytest.mark.xfail(not (ROOT / "ood_audit" / "commands" / "nightly.py").exists(), strict=False,
                                    reason="the `nightly` command is not in the CLI yet")


# One child interpreter runs every script as `__main__` with `--help`, one after the other: each script
# imports torch through the CLI, which costs seconds per process, so one import for all keeps this fast.
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
out = {}
for script in sys.argv[1:]:
    sys.argv, buf, code = [script, "--help"], io.StringIO(), None
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code
    out[script] = {"code": 0 if code is None else code, "output": buf.getvalue()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, dict]:
    """``{script: {"code": exit status, "output": text}}`` for `python jobs/X.py --help`."""
    res = subprocess.run([sys.executable, "-c", HELP_RUNNER, *SCRIPTS], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.parametrize("script", [pytest.param(s, marks=NIGHTLY_PENDING) if s == "jobs/nightly.py" else s
                                    for s in SCRIPTS])
def test_entrypoint_answers_help_and_knows_the_flags_used(script, helps):
    assert (ROOT / script).is_file()
    res = helps[script]
    assert res["code"] == 0 and res["output"].startswith("usage:"), res["output"][-2000:]
    for argv in entrypoints():
        if argv[:2] == ["python", script]:
            unknown = [a for a in argv[2:] if a.startswith("--") and not re.search(rf"{a}\b", res["output"])]
            assert not unknown, f"{script} does not take {unknown}"


# ---- the nightly config ----------------------------------------------------------------------------------

def nightly_config() -> dict:
    (cm,) = [d for d in of_kind("ConfigMap") if "nightly.yaml" in d["data"]]
    return load_yaml(cm["data"]["nightly.yaml"])[0]


def test_nightly_config_has_the_documented_shape():
    cfg = nightly_config()
    assert set(cfg) == {"bundle", "inputs", "output", "scan", "exports", "report", "lease"}
    assert cfg["bundle"].startswith("s3://my-audit/bundles/") and cfg["inputs"] == ["s3://my-datasets/incoming/"]
    assert cfg["lease"]["ttl_s"] > 0 and {e["sink"] for e in cfg["exports"]} == {"label-studio", "jsonl"}


def test_nightly_config_validates_against_the_job_schema():
    config = pytest.importorskip("ood_audit.nightly.config", reason="the nightly config schema is not there yet")
    config.NightlyConfig.model_validate(nightly_config())


# ---- the cluster launcher --------------------------------------------------------------------------------

def test_cluster_launcher_matches_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    from importlib.resources import files

    schema = json.loads((files("ray") / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load_yaml(LAUNCHER.read_text())[0], schema)


def test_cluster_launcher_aws_gpu_workers_from_zero():
    cfg = load_yaml(LAUNCHER.read_text())[0]
    assert cfg["cluster_name"] and cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    for name, t in types.items():
        assert {"resources", "node_config"} <= t.keys()
        assert t["node_config"].get("ImageId", "latest_dlami") != "latest_dlami", f"{name}: latest_dlami is too old"
        assert "IamInstanceProfile" in t["node_config"], f"{name}: Ray's default role has S3 full access"
        if name != cfg["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    gpu = [t for t in types.values() if re.match(r"(g4dn|g5|g6e?|p3|p4d|p5)\.", t["node_config"]["InstanceType"])]
    assert gpu and all(t["min_workers"] == 0 for t in gpu)


# ---- IAM --------------------------------------------------------------------------------------------------

POLICIES = sorted(CLUSTER.glob("iam-policy*.json"))


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_iam_policy_is_least_privilege(path):
    doc = json.loads(path.read_text())
    assert set(doc) == {"Version", "Statement"} and doc["Version"] == "2012-10-17"
    for st in doc["Statement"]:
        assert {"Effect", "Action", "Resource"} <= st.keys() and st["Effect"] in ("Allow", "Deny"), st
        actions, resources = _list(st["Action"]), _list(st["Resource"])
        if st["Effect"] == "Deny":  # only the bundle guard: a put under bundles/ without If-None-Match
            assert st == NEVER_OVERWRITE_A_BUNDLE | {"Sid": st.get("Sid")}, st
            continue
        assert not [a for a in actions if "*" in a] and "*" not in resources, st
        assert all(a.split(":")[0] in ("s3", "sqs") for a in actions)
        for r in resources:
            if r.startswith("arn:aws:s3:::"):
                assert r.removeprefix("arn:aws:s3:::").split("/")[0] in BUCKETS, r
                assert r.endswith("/*") or actions == ["s3:ListBucket"], f"object actions on a bucket: {st}"
        if "s3:ListBucket" in actions:
            assert actions == ["s3:ListBucket"] and st["Condition"]["StringLike"]["s3:prefix"], st


NEVER_OVERWRITE_A_BUNDLE = {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::my-audit/bundles/*",
                            "Condition": {"Null": {"s3:if-none-match": "true"}}}


def test_bundles_can_only_be_created_never_overwritten():
    """Item 6: whoever may write bundles may only create them (a PUT with If-None-Match, as write_bundle
    sends), so a pinned bundles/<id>/ cannot be replaced by another bundle's files."""
    for path in POLICIES:
        if allows(path.name, "s3:PutObject", "s3://my-audit/bundles/0123/model.safetensors"):
            statements = json.loads(path.read_text())["Statement"]
            assert any(st == NEVER_OVERWRITE_A_BUNDLE | {"Sid": st.get("Sid")} for st in statements), path.name


def _list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def allows(policy: str, action: str, uri: str) -> bool:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    for st in json.loads((CLUSTER / policy).read_text())["Statement"]:
        if st["Effect"] == "Allow" and action in _list(st["Action"]):
            if action == "s3:ListBucket":
                prefixes = st["Condition"]["StringLike"]["s3:prefix"]
                on_bucket = f"arn:aws:s3:::{bucket}" in _list(st["Resource"])
                if on_bucket and any(fnmatch.fnmatchcase(key, p) for p in prefixes):
                    return True
            elif any(fnmatch.fnmatchcase(f"arn:aws:s3:::{bucket}/{key}x", r) for r in _list(st["Resource"])):
                return True
    return False


def test_policies_cover_what_the_jobs_read_and_write():
    cfg = nightly_config()
    exported = [u for e in cfg["exports"] for u in (e.get("tasks_file"), e.get("prefix")) if u]
    written = [cfg["output"] + "/", cfg["report"]["out"], *exported]
    for uri in written:
        assert allows("iam-policy.json", "s3:PutObject", uri), uri
    for uri in [cfg["bundle"] + "/"] + cfg["inputs"]:
        assert allows("iam-policy.json", "s3:GetObject", uri) and allows("iam-policy.json", "s3:ListBucket", uri)
        assert not allows("iam-policy.json", "s3:PutObject", uri), f"the nightly job must not write {uri}"
    for argv in entrypoints():
        flags = dict(zip(argv[2::2], argv[3::2]))
        if argv[1] in ("jobs/train.py", "jobs/calibrate.py"):
            assert allows("iam-policy-train.json", "s3:GetObject", flags["--data"])
            for out in (flags["--output"].rstrip("/") + ("/bundles/" if argv[1] == "jobs/calibrate.py" else ""),
                        flags.get("--storage", "s3://my-audit/train-runs") + "/"):
                assert allows("iam-policy-train.json", "s3:PutObject", out), out


def test_s3_placeholders_are_consistent():
    texts = [p.read_text() for p in CLUSTER.iterdir()]
    assert {m for t in texts for m in re.findall(r"s3://([a-z0-9.-]+)", t)} <= BUCKETS
    assert {m for t in texts for m in re.findall(r"arn:aws:s3:::([a-z0-9.-]+)", t)} <= BUCKETS


# ---- Dockerfile -------------------------------------------------------------------------------------------

@dataclass
class Instruction:
    name: str
    args: str
    line: int
    flags: dict[str, str] = field(default_factory=dict)


def dockerfile(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    """Instructions with continuation lines joined, comments dropped, --flags split off."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        start = start or n
        buf += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            assert word.isupper(), f"Dockerfile line {start}: instruction {word!r} is not uppercase"
            flags = dict(f.removeprefix("--").partition("=")[::2] for f in re.findall(r"--\S+", rest)
                         if word in ("COPY", "ADD", "FROM"))
            args = " ".join(w for w in rest.split() if not (word in ("COPY", "ADD") and w.startswith("--")))
            out.append(Instruction(word, args.strip(), start, flags))
            buf, start = "", 0
    return out


def test_dockerfile_builds_on_a_pinned_ray_image_as_a_non_root_user():
    ins = dockerfile()
    args = {}
    for i in ins:
        if i.name == "FROM":
            break
        assert i.name == "ARG", "only ARGs may come before FROM"
        name, _, default = i.args.partition("=")
        args[name] = default
    first_from = next(i for i in ins if i.name == "FROM").args.split()[0]
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], first_from)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-py311-(cpu|gpu|cu\d+)", base), base
    assert ":latest" not in (ROOT / "Dockerfile").read_text()
    users = [i.args for i in ins if i.name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [i for i in ins if i.name == "WORKDIR"]


def test_dockerfile_copies_what_exists_and_installs_without_cache():
    ins = dockerfile()
    copies = [i for i in ins if i.name in ("COPY", "ADD")]
    sources = [s.rstrip("/") for i in copies for s in i.args.split()[:-1]]
    assert {"pyproject.toml", "ood_audit", "jobs"} <= set(sources)
    assert all((ROOT / s).exists() for s in sources), [s for s in sources if not (ROOT / s).exists()]
    pips = [i.args for i in ins if i.name == "RUN" and "pip install" in i.args]
    assert pips and all("--no-cache-dir" in p for p in pips)
    assert not any(re.search(r"\[(dev|demo|bench|gpu)\]|ray\[", p) for p in pips), "no extras beyond the base's Ray"
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "tests", ".git", "**/__pycache__"} <= ignored
    assert not {"pyproject.toml", "README.md", "ood_audit", "jobs"} & ignored


# ---- locked down (issue 21, item 7) -----------------------------------------------------------------------

def _containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def _head_pods() -> list[dict]:
    return [c["headGroupSpec"]["template"] for _, c in ray_cluster_specs()]


def _worker_pods() -> list[dict]:
    return [g["template"] for _, c in ray_cluster_specs() for g in c.get("workerGroupSpecs", [])]


def test_ray_token_authentication_from_a_secret_everywhere():
    for name, spec in ray_cluster_specs():
        assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET["name"]}, name
    pods = [t["spec"] for t in _head_pods() + _worker_pods()]
    pods += [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in of_kind("CronJob")]
    for pod in pods:
        for c in _containers(pod):
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["RAY_AUTH_MODE"].get("value") == "token", c["name"]
            assert env["RAY_AUTH_TOKEN"] == {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": TOKEN_SECRET}}
    launcher = load_yaml(LAUNCHER.read_text())[0]
    options = " ".join(launcher["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    token_path = re.search(r"--env RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert token_path in launcher["file_mounts"]  # the token file travels to every node
    for d in of_kind("RayJob") + of_kind("RayCronJob"):  # the operator submits: no submitter pod to let in
        job = d["spec"] if d["kind"] == "RayJob" else d["spec"]["jobTemplate"]
        assert job["submissionMode"] == "HTTPMode", d["metadata"]["name"]


def test_only_workers_the_operator_and_the_submitter_reach_a_head():
    (policy,) = of_kind("NetworkPolicy")
    spec = policy["spec"]
    selector = spec["podSelector"]["matchLabels"]
    assert selector.get("ray.io/node-type") == "head" and spec["policyTypes"] == ["Ingress"]
    own = {k: v for k, v in selector.items() if not k.startswith("ray.io/")}
    assert own, "the policy must select this project's heads, not every Ray head"
    for template in _head_pods() + _worker_pods():  # KubeRay adds ray.io/node-type; the rest is ours
        assert own.items() <= template["metadata"]["labels"].items()
    peers: dict[str, set[int] | None] = {}
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule["ports"]} if "ports" in rule else None
        for peer in rule["from"]:
            labels = peer["podSelector"]["matchLabels"]
            assert "ipBlock" not in peer and peer["podSelector"]["matchLabels"], peer
            if labels.get("app.kubernetes.io/name") == "kuberay-operator":
                peers["operator"] = ports
            elif labels == {**own, "ray.io/node-type": "worker"} and "namespaceSelector" not in peer:
                peers["workers"] = ports
            elif labels.get("app.kubernetes.io/component") == "submitter" and "namespaceSelector" not in peer:
                peers["submitter"] = ports
                (cron,) = of_kind("CronJob")
                assert labels.items() <= cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].items()
            else:
                pytest.fail(f"unexpected peer {peer}")
    assert set(peers) == {"operator", "workers", "submitter"}
    assert peers["operator"] and peers["submitter"] and peers["operator"] | peers["submitter"] <= {8265, 6379, 10001}
    assert 8265 in peers["submitter"] and 8265 in peers["operator"]


def test_every_container_is_restricted_and_writes_only_to_empty_dirs():
    templates = [t["spec"] for t in _head_pods() + _worker_pods()]
    templates += [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in of_kind("CronJob")]
    for pod in templates:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in _containers(pod):
            assert c["securityContext"] == RESTRICTED, c["name"]
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert {"/tmp", "/home/ray/.cache"} <= mounts.keys(), c["name"]
            writable = {path for path, vol in mounts.items() if "emptyDir" in volumes[vol]}
            assert writable <= WRITABLE and {"/tmp", "/home/ray/.cache"} <= writable
    for _, spec in ray_cluster_specs():  # the autoscaler sidecar KubeRay adds to the head
        assert spec["autoscalerOptions"]["securityContext"] == RESTRICTED
        head_volumes = {v["name"]: v for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
        for m in spec["autoscalerOptions"]["volumeMounts"]:
            assert "emptyDir" in head_volumes[m["name"]] and m["mountPath"] in WRITABLE


def test_service_account_token_only_where_the_kubernetes_api_is_called():
    """Only a head with the in-tree autoscaler (its sidecar scales the worker pods) gets the token."""
    for _, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]["template"]["spec"]
        assert head["automountServiceAccountToken"] is spec["enableInTreeAutoscaling"]
        for g in spec.get("workerGroupSpecs", []):
            assert g["template"]["spec"]["automountServiceAccountToken"] is False, g["groupName"]
    for d in of_kind("CronJob"):
        assert d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
