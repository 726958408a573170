"""The Docker deployment files: compose.yaml resolves (``docker-compose config``, no engine needed)
to the services the README describes, every variable it reads is documented in .env.example and is a
real setting, and docker/Dockerfile keeps its layer order, user, healthcheck and command.

The compose tests skip with a reason when ``docker-compose`` is absent (``scripts/ensure-docker-compose``
installs Debian's 1.29 where it can). They run on a copy of compose.yaml in a temporary folder with a
clean environment, so neither a developer's .env nor exported variables change what is checked.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from segagent_backend.settings import FIELDS, Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

SETTINGS = {var: default for var, _, default, _ in FIELDS}
# read by compose.yaml but not settings of segagent_backend: each is marked "(compose only)" in .env.example
COMPOSE_ONLY = {"LABEL_STUDIO_PORT", "HF_TOKEN", "SEGAGENT_IMAGE", "WORKER_GPU", "TRAINER_GPU", "REDIS_PASSWORD",
                "BACKEND_ADDRESS", "BACKEND_MEMORY", "WORKER_MEMORY", "TRAINER_MEMORY"}
# compose refuses to start without a Redis password; the tests give it this one unless they say otherwise
PASSWORD = "t0ps3cret"
REDIS_URL = f"redis://:{PASSWORD}@redis:6379/0"
# settings compose fixes per service instead of reading them from .env
FIXED_BY_COMPOSE = {"MODEL_DIR", "REDIS_URL"}
SEGAGENT_SERVICES = ("backend", "worker", "trainer")
GPU_SERVICES = ("worker", "trainer")
MODEL_DIR, HF_HOME = "/data/models", "/data/hf"

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (scripts/ensure-docker-compose installs it as root with apt-get)")


# ----- helpers ---------------------------------------------------------------------------------------
def run_config(tmp_path: Path, dotenv: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``docker-compose config`` on a copy of compose.yaml, with ``dotenv`` as its .env and only ``env``
    (plus PATH/HOME and REDIS_PASSWORD, which ``env`` may override or drop with None) in the environment."""
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "REDIS_PASSWORD": PASSWORD,
             **(env or {})}
    clean = {k: v for k, v in clean.items() if v is not None}
    return subprocess.run([DOCKER_COMPOSE, "-f", "compose.yaml", "config"], cwd=tmp_path, env=clean,
                          capture_output=True, text=True, timeout=60)


def resolved(tmp_path: Path, dotenv: str | None = None, env: dict | None = None) -> dict:
    proc = run_config(tmp_path, dotenv, env)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}{proc.stdout}"
    return yaml.safe_load(proc.stdout)


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            values[name.strip()] = value
    return values


def compose_variables() -> set[str]:
    """Every ${VAR...} compose.yaml interpolates (comments included: they must not name unknown ones)."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))


def compose_defaults() -> dict[str, str]:
    """VAR -> the default of its ${VAR:-default} in compose.yaml."""
    return dict(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", COMPOSE.read_text()))


def published_ports(service: dict) -> list[tuple[str, str]]:
    return [(published, target) for _, published, target in bound_ports(service)]


def bound_ports(service: dict) -> list[tuple[str, str, str]]:
    """(host address or "" for every interface, host port, container port)"""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # the long form docker-compose config prints
            out.append((str(port.get("host_ip") or ""), str(port.get("published")), str(port.get("target"))))
        else:
            parts = str(port).split("/")[0].split(":")
            out.append((parts[0] if len(parts) == 3 else "", parts[-2], parts[-1]))
    return out


def gpu_devices(service: dict) -> list[dict]:
    reservations = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {})
    return [d for d in reservations.get("devices") or [] if "gpu" in (d.get("capabilities") or [])]


def volume_targets(service: dict) -> dict[str, str]:
    """container path -> volume name"""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = volume.get("source")
        else:
            source, target = str(volume).split(":")[:2]
            out[target] = source
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            current = ""
    return out


# ----- (a) compose.yaml validates ----------------------------------------------------------------------
@needs_compose
def test_config_validates_with_only_a_redis_password(tmp_path):
    proc = run_config(tmp_path)
    assert proc.returncode == 0, proc.stderr


@needs_compose
@pytest.mark.parametrize("password", [None, ""])
def test_config_refuses_to_run_redis_without_a_password(tmp_path, password):
    proc = run_config(tmp_path, env={"REDIS_PASSWORD": password})
    assert proc.returncode != 0
    assert "set REDIS_PASSWORD in .env" in proc.stderr + proc.stdout


@needs_compose
def test_config_validates_with_env_example_as_dotenv(tmp_path):
    proc = run_config(tmp_path, dotenv=ENV_EXAMPLE.read_text())
    assert proc.returncode == 0, proc.stderr


@needs_compose
def test_env_example_values_reach_the_containers(tmp_path):
    dotenv = ENV_EXAMPLE.read_text() + "\nSEGAGENT_SEGMENTER=hf-sam\nSEGAGENT_SAM_MODEL=facebook/sam-vit-base\nPORT=9191\n"
    services = resolved(tmp_path, dotenv=dotenv)["services"]
    for name in SEGAGENT_SERVICES:
        assert services[name]["environment"]["SEGAGENT_SEGMENTER"] == "hf-sam"
        assert services[name]["environment"]["SEGAGENT_SAM_MODEL"] == "facebook/sam-vit-base"
    # PORT is the host side; the container keeps serving on 9090
    assert published_ports(services["backend"]) == [("9191", "9090")]
    assert services["backend"]["environment"]["REDIS_URL"] == REDIS_URL
    assert services["backend"]["environment"]["PORT"] == "9090"


# ----- (b) the resolved services -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def config(tmp_path_factory):
    if DOCKER_COMPOSE is None:
        pytest.skip("docker-compose is not installed (scripts/ensure-docker-compose installs it as root with apt-get)")
    return resolved(tmp_path_factory.mktemp("compose"))


def test_every_service_is_there(config):
    assert set(config["services"]) == {"redis", "backend", "worker", "trainer", "label-studio"}


def test_redis_is_persistent_healthchecked_and_private(config):
    redis = config["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"] if isinstance(redis["command"], str) else " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert volume_targets(redis).get("/data") == "redis-data"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["restart"] == "unless-stopped"
    assert "ports" not in redis, "Redis holds jobs: keep it off the host's ports"
    # a password (issue 23 #9: anyone who reaches Redis queues jobs and announces versions), which the
    # healthcheck's redis-cli and every client's REDIS_URL carry
    assert command.split("--requirepass ")[1].split()[0] == PASSWORD
    assert redis["environment"]["REDISCLI_AUTH"] == PASSWORD
    # and on the `queue` network alone: Label Studio (on `web`) cannot even connect to it
    assert set(redis["networks"]) == {"queue"}
    assert set(config["services"]["label-studio"]["networks"]) == {"web"}
    for name in SEGAGENT_SERVICES:
        assert set(config["services"][name]["networks"]) == {"queue", "web"}


def test_backend_is_the_web_process_in_queue_mode_without_gpu(config):
    backend = config["services"]["backend"]
    assert backend["environment"]["REDIS_URL"] == REDIS_URL
    assert not gpu_devices(backend), "the web process loads no model in queue mode"
    assert backend["environment"]["DEVICE"] == "cpu"
    assert published_ports(backend) == [("9090", "9090")]
    command = backend.get("command")
    assert command in (None, ["segagent", "serve"], "segagent serve")
    assert "healthcheck" not in backend, "the image's HEALTHCHECK (curl /health) is the web process's"


@pytest.mark.parametrize("name, queues", [("worker", "interactive,batch"), ("trainer", "train")])
def test_gpu_workers(config, name, queues):
    service = config["services"][name]
    assert service["command"][:2] == ["segagent", "worker"]
    assert service["command"][service["command"].index("--queues") + 1] == queues
    devices = gpu_devices(service)
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia"
    # one named GPU: `count: 1` would give every replica GPU 0 (see compose.yaml's header)
    assert devices[0].get("device_ids") == ["0"] and "count" not in devices[0]
    assert service["environment"]["REDIS_URL"] == REDIS_URL
    assert service["environment"]["DEVICE"] == "cuda"
    assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "segagent" in " ".join(service["healthcheck"]["test"]), "a worker's health is its heartbeat in Redis"


@needs_compose
def test_gpu_index_per_worker_comes_from_env(tmp_path):
    services = resolved(tmp_path, env={"WORKER_GPU": "2", "TRAINER_GPU": "3"})["services"]
    assert gpu_devices(services["worker"])[0]["device_ids"] == ["2"]
    assert gpu_devices(services["trainer"])[0]["device_ids"] == ["3"]


def test_segagent_services_share_image_volumes_redis_and_restart(config):
    services = config["services"]
    images = {services[name]["image"] for name in SEGAGENT_SERVICES}
    assert images == {"segagent-backend:latest"}
    for name in SEGAGENT_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        targets = volume_targets(service)
        assert targets.get(MODEL_DIR) == "models", f"{name}: MODEL_DIR must be the shared volume"
        assert targets.get(HF_HOME) == "hf-cache", f"{name}: the Hugging Face cache must be a volume"
        assert service["restart"] == "unless-stopped"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert {"models", "hf-cache", "redis-data", "label-studio-data"} <= set(config["volumes"])


def test_label_studio_is_optional_and_can_reach_the_backend(config):
    ls = config["services"]["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    assert ls["profiles"] == ["label-studio"]
    assert published_ports(ls) == [("8080", "8080")]
    assert volume_targets(ls).get("/label-studio/data") == "label-studio-data"
    assert ls["restart"] == "unless-stopped"
    # the SSRF guard stays on (issue 27 #2: it is what refused the model's webhook); what lets Label
    # Studio reach `backend` is its list, checked against Label Studio's code below
    assert ls["environment"]["SSRF_PROTECTION_ENABLED"] == "true" and ls["environment"]["ML_BLOCK_LOCAL_IP"] == "true"
    assert ls["environment"]["USE_DEFAULT_BANNED_SUBNETS"] == "false"


# ----- Label Studio's SSRF settings against Label Studio's own code (issue 27 #2) -----------------------
LS_PACKAGE = next(iter((REPO / ".venv-ls" / "lib").glob("python3*/site-packages/label_studio")), None)
LS_PYTHON = REPO / ".venv-ls" / "bin" / "python"
needs_label_studio = pytest.mark.skipif(LS_PACKAGE is None, reason="Label Studio is not installed in .venv-ls "
                                                                   "(make install-labelstudio)")
# Label Studio's settings as it reads them from the environment, and its own check of an address
LS_GUARD = textwrap.dedent("""
    import json, os, sys
    env, ips = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    os.environ.clear()
    os.environ.update(env)
    import label_studio
    sys.path.insert(0, os.path.dirname(label_studio.__file__))
    from core.utils.params import get_bool_env, get_env_list
    # the lines of label_studio/core/settings/base.py that read them
    settings = dict(SSRF_PROTECTION_ENABLED=get_bool_env("SSRF_PROTECTION_ENABLED", True),
                    USE_DEFAULT_BANNED_SUBNETS=get_bool_env("USE_DEFAULT_BANNED_SUBNETS", True),
                    USER_ADDITIONAL_BANNED_SUBNETS=get_env_list("USER_ADDITIONAL_BANNED_SUBNETS", default=[]),
                    ML_BLOCK_LOCAL_IP=get_bool_env("ML_BLOCK_LOCAL_IP", True))
    from django.conf import settings as django_settings
    django_settings.configure(**settings)
    from core.utils.io import validate_ip
    verdicts = {}
    for ip in ips:
        try:
            validate_ip(ip)
            verdicts[ip] = "allowed"
        except Exception as exc:
            verdicts[ip] = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"settings": settings, "ips": verdicts}))
    """)


def label_studio_default_subnets() -> list[str]:
    source = (LS_PACKAGE / "core" / "utils" / "io.py").read_text()
    start = source.index("default_banned_subnets = [")
    return re.findall(r"'([^']+)'", source[start:source.index("]", start)])


@needs_compose
@needs_label_studio
def test_label_studio_reaches_the_backend_network_and_nothing_else_private(config):
    base = (LS_PACKAGE / "core" / "settings" / "base.py").read_text()
    for line in ("SSRF_PROTECTION_ENABLED = get_bool_env('SSRF_PROTECTION_ENABLED', True)",
                 "USE_DEFAULT_BANNED_SUBNETS = get_bool_env('USE_DEFAULT_BANNED_SUBNETS', True)",
                 "USER_ADDITIONAL_BANNED_SUBNETS = get_env_list('USER_ADDITIONAL_BANNED_SUBNETS', default=[])",
                 "ML_BLOCK_LOCAL_IP = get_bool_env('ML_BLOCK_LOCAL_IP', True)"):
        assert line in base, f"Label Studio no longer reads its SSRF settings as compose.yaml expects: {line}"
    web = ipaddress.ip_network(config["networks"]["web"]["ipam"]["config"][0]["subnet"])
    ls = config["services"]["label-studio"]
    # the subnet is the backend's: the services that Label Studio calls are on it
    assert "web" in ls["networks"] and "web" in config["services"]["backend"]["networks"]
    inside = [str(web[1]), str(web[2]), str(web[web.num_addresses // 2]), str(web[-2])]
    outside = ["127.0.0.1", "10.0.0.1", "169.254.169.254", "172.17.0.2", "192.168.1.1", "100.64.0.1",
               str(web[0] - 1), str(web[-1] + 1), "::1", "fd00::1"]
    for subnet in map(ipaddress.ip_network, label_studio_default_subnets()):
        for address in (subnet[0], subnet[-1], subnet[subnet.num_addresses // 3]):
            if address not in web:
                outside.append(str(address))
    env = {k: str(v) for k, v in ls["environment"].items()}
    proc = subprocess.run([str(LS_PYTHON), "-c", LS_GUARD, json.dumps(env), json.dumps(inside + outside)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    assert answer["settings"]["SSRF_PROTECTION_ENABLED"] and answer["settings"]["ML_BLOCK_LOCAL_IP"]
    verdicts = answer["ips"]
    assert all(verdicts[ip] == "allowed" for ip in inside), {ip: verdicts[ip] for ip in inside}
    allowed = [ip for ip in outside if verdicts[ip] == "allowed"]
    assert not allowed, f"Label Studio would reach {allowed}: its list must be its default less {web} only"


@needs_compose
@needs_label_studio
def test_label_studio_banned_list_is_its_default_less_the_web_subnet(config):
    """The exact list: Label Studio's default subnets, the one that holds `web` split around it."""
    web = ipaddress.ip_network(config["networks"]["web"]["ipam"]["config"][0]["subnet"])
    expected = []
    for subnet in map(ipaddress.ip_network, label_studio_default_subnets()):
        if subnet.version == web.version and web.subnet_of(subnet):
            expected += subnet.address_exclude(web)
        else:
            expected.append(subnet)
    listed = config["services"]["label-studio"]["environment"]["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")
    assert sorted(map(ipaddress.ip_network, listed), key=str) == sorted(expected, key=str)


# ----- deployment defaults (issue 23 #10) --------------------------------------------------------------
def test_backend_is_published_on_this_machine_only_by_default(config):
    assert bound_ports(config["services"]["backend"]) == [("127.0.0.1", "9090", "9090")]


@needs_compose
@pytest.mark.parametrize("address, expected", [("", "127.0.0.1"), ("0.0.0.0", "0.0.0.0"), ("10.1.2.3", "10.1.2.3")])
def test_the_operator_chooses_the_backend_address(tmp_path, address, expected):
    services = resolved(tmp_path, env={"BACKEND_ADDRESS": address})["services"]
    assert bound_ports(services["backend"]) == [(expected, "9090", "9090")]


@needs_compose
def test_segagent_services_have_memory_limits(tmp_path, config):
    limits = {name: str(config["services"][name].get("mem_limit")) for name in SEGAGENT_SERVICES}
    assert limits == {"backend": "4g", "worker": "32g", "trainer": "64g"}
    services = resolved(tmp_path, env={"WORKER_MEMORY": "12g"})["services"]
    assert str(services["worker"]["mem_limit"]) == "12g"


def test_resolved_environment_is_valid_settings(config):
    """What compose hands the containers starts the service: Settings accepts it as it is."""
    for name in SEGAGENT_SERVICES:
        environment = {k: "" if v is None else str(v) for k, v in config["services"][name]["environment"].items()}
        settings = Settings.from_env(environment)
        assert settings.redis_url == REDIS_URL
        assert settings.max_steps == 7 and settings.segmenter == "grabcut"


# ----- (c) variables: compose <-> .env.example <-> settings ----------------------------------------
def test_every_compose_variable_is_in_env_example():
    missing = compose_variables() - set(env_example())
    assert not missing, f"compose.yaml reads {sorted(missing)} but .env.example does not list them"


def test_every_env_example_variable_is_read_by_compose():
    unused = set(env_example()) - compose_variables()
    assert not unused, f".env.example lists {sorted(unused)} but compose.yaml never reads them"


def test_every_env_example_variable_is_a_setting_or_documented_compose_only():
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name = line.partition("=")[0].strip()
        comment = lines[i - 1] if i else ""
        assert comment.startswith("# ") and len(comment) > 4, f".env.example: {name} needs a one-line comment above it"
        if name in COMPOSE_ONLY:
            assert "(compose only)" in comment, f".env.example: say that {name} is read by compose only"
        else:
            assert name in SETTINGS, f".env.example: {name} is neither a setting of segagent_backend.settings nor compose-only"


def test_compose_reads_every_deployment_setting_with_its_default():
    defaults = compose_defaults()
    # PORT and DEVICE are read, but mean the host port / the workers' device (see compose.yaml)
    expected = set(SETTINGS) - FIXED_BY_COMPOSE
    assert not expected - set(defaults), f"compose.yaml does not pass {sorted(expected - set(defaults))}"
    for var in expected - {"DEVICE"}:
        # an empty value would reach Settings as "unset"; a setting with a default must get the default
        assert defaults[var] == (SETTINGS[var] or ""), f"${{{var}:-{defaults[var]}}} differs from the settings' default {SETTINGS[var]!r}"


def test_env_example_values_are_valid_settings():
    values = {k: v for k, v in env_example().items() if k in SETTINGS}
    Settings.from_env(values)


# ----- (d) Dockerfile and .dockerignore ----------------------------------------------------------------
def test_dockerfile_installs_dependencies_before_the_source():
    steps = dockerfile_instructions()
    text = [f"{k} {a}" for k, a in steps]

    def first(predicate, what):
        found = [i for i, line in enumerate(text) if predicate(line)]
        assert found, f"Dockerfile: no {what}"
        return found[0]

    source = first(lambda s: s.startswith("COPY") and "segagent_backend" in s, "COPY of segagent_backend")
    torch = first(lambda s: s.startswith("RUN") and "requirements-torch.txt" in s, "torch install")
    torchvision = first(lambda s: s.startswith(("RUN", "ARG")) and "torchvision==0.28.0" in s, "torchvision==0.28.0")
    runtime = first(lambda s: s.startswith("RUN") and re.search(r"--no-deps -r requirements\.lock", s),
                    "requirements.lock install")
    package = first(lambda s: s.startswith("RUN") and re.search(r"pip install --no-deps .*\.( |$)", s),
                    "pip install --no-deps .")
    assert torch < torchvision < runtime < source < package
    # the requirements files are copied by themselves, not with the source
    for i in range(source):
        if text[i].startswith("COPY"):
            assert "segagent_backend" not in text[i] and "trainer" not in text[i]
    assert steps[0] == ("FROM", "python:3.11-slim")


def test_dockerfile_runtime_only_non_root_healthcheck_and_command():
    steps = dockerfile_instructions()
    body = "\n".join(f"{k} {a}" for k, a in steps)
    assert "requirements-test" not in body, "test requirements must not go into the runtime image"
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [a for k, a in steps if k == "HEALTHCHECK"]
    assert len(health) == 1 and "curl" in health[0] and "127.0.0.1:${PORT}/health" in health[0]
    assert '-u "$BASIC_AUTH_USER:$BASIC_AUTH_PASS"' in health[0]
    cmd = [a for k, a in steps if k == "CMD"]
    assert json.loads(cmd[-1]) == ["segagent", "serve"]
    env = " ".join(a for k, a in steps if k == "ENV")
    for assignment in ("PORT=9090", f"MODEL_DIR={MODEL_DIR}", f"HF_HOME={HF_HOME}"):
        assert assignment in env.split(), f"Dockerfile: ENV {assignment} missing"
    for package in ("libgl1", "libglib2.0-0", "curl"):
        assert package in body


def test_dockerignore_keeps_local_state_out_of_the_context():
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".venv", ".venv-ls", ".git", "models", ".redis", "bench/out", "tests", ".env", ".pytest_cache"):
        assert needed in patterns, f".dockerignore: {needed} missing"
    assert any("__pycache__" in p for p in patterns) and any("egg-info" in p for p in patterns)
    # what the Dockerfile copies must stay in the context
    for kept in ("segagent_backend", "trainer", "_wsgi.py", "pyproject.toml", "README.md", "requirements.lock"):
        assert kept not in patterns


# ----- (e) bad or empty input ----------------------------------------------------------------------
@needs_compose
@pytest.mark.parametrize("how", ["environment", "dotenv"])
def test_empty_values_fall_back_to_defaults(tmp_path, how):
    blanks = {"PORT": "", "WORKER_GPU": "", "SEGAGENT_MAX_STEPS": "", "SEGAGENT_SEGMENTER": "", "LABEL_STUDIO_PORT": ""}
    if how == "environment":
        services = resolved(tmp_path, env=blanks)["services"]
    else:
        services = resolved(tmp_path, dotenv="".join(f"{k}=\n" for k in blanks))["services"]
    assert published_ports(services["backend"]) == [("9090", "9090")]
    assert published_ports(services["label-studio"]) == [("8080", "8080")]
    assert gpu_devices(services["worker"])[0]["device_ids"] == ["0"]
    assert services["worker"]["environment"]["SEGAGENT_MAX_STEPS"] == "7"
    assert services["worker"]["environment"]["SEGAGENT_SEGMENTER"] == "grabcut"


@needs_compose
def test_a_bad_port_is_refused_naming_the_mapping(tmp_path):
    proc = run_config(tmp_path, env={"PORT": "not-a-port"})
    assert proc.returncode != 0
    assert "backend.ports" in proc.stderr + proc.stdout


@needs_compose
def test_a_bad_setting_is_named_when_the_service_starts(tmp_path):
    """compose passes values through; the service's settings name a bad one (here before any model loads)."""
    services = resolved(tmp_path, env={"SEGAGENT_SEGMENTER": "sam"})["services"]
    environment = {k: "" if v is None else str(v) for k, v in services["worker"]["environment"].items()}
    with pytest.raises(ValueError, match="SEGAGENT_SAM_CHECKPOINT"):
        Settings.from_env(environment)
