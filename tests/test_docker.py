"""The container and cluster files (no Docker engine here): they parse, name what the code expects,
expose nothing beyond loopback, and install the project exactly as the README does."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
# pip options that choose where wheels come from or how quietly, not what is installed.
PIP_OPTIONS_WITH_VALUE = {"--extra-index-url", "--index-url", "-i", "--find-links", "-f"}
PIP_FLAGS = {"--no-cache-dir", "--quiet", "-q", "--upgrade", "-U", "--no-input"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((DOCKER / "cluster.yaml").read_text())


# --------------------------------------------------------------------------- parsing helpers

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def dockerfile_base_image(text: str) -> str:
    """The FROM image with ARG defaults substituted."""
    args: dict[str, str] = {}
    for word, rest in dockerfile_instructions(text):
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        if word == "FROM":
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
    raise AssertionError("no FROM")


def pip_installs(command: str) -> list[list[str]]:
    """What each ``pip install`` in a shell command installs (options that only pick the index or
    the verbosity removed), e.g. [['-e', '.']]."""
    out = []
    for part in re.split(r"&&|;|\n", command):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":  # pip / -m pip / .venv/bin/pip
                rest, kept, skip = words[i + 2:], [], False
                for w in rest:
                    if skip:
                        skip = False
                    elif w in PIP_OPTIONS_WITH_VALUE:
                        skip = True
                    elif w not in PIP_FLAGS:
                        kept.append(w)
                out.append(kept)
                break
    return out


def editable_target(install: list[str]) -> str:
    """'.' for ['-e', '.'] / ['-e', '.[dev]']; the path of the repo being installed, extras cut."""
    assert install[:1] == ["-e"] and len(install) == 2, f"not an editable install of one path: {install}"
    return re.sub(r"\[.*\]$", "", install[1].strip("'\""))


def readme_install() -> tuple[str, list[str]]:
    """(file, the editable install it tells users to run): README.md's, else the Makefile's."""
    for name in ("README.md", "Makefile"):
        path = REPO / name
        if path.exists():
            installs = [i for line in path.read_text().splitlines() for i in pip_installs(line)
                        if i[:1] == ["-e"]]
            if installs:
                return name, installs[0]
    raise AssertionError("neither README.md nor the Makefile shows a `pip install -e` of the project")


# --------------------------------------------------------------------------- Dockerfile

def test_dockerfile_is_on_rays_cuda_image_matching_the_pinned_ray_and_python() -> None:
    import ray

    image = dockerfile_base_image((DOCKER / "Dockerfile").read_text())
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-cu(\d+)", image)
    assert m, f"{image}: expected rayproject/ray:<version>-py<XY>-cu<NNN>"
    version, python = m.group(1), f"{m.group(2)}.{m.group(3)}"
    project = _pyproject()
    ray_spec = next(d for d in project["dependencies"] if d.startswith("ray["))
    assert version in SpecifierSet(ray_spec.split("]", 1)[1]), (version, ray_spec)
    assert python in SpecifierSet(project["requires-python"]) or \
        f"{python}.0" in SpecifierSet(project["requires-python"])
    assert version == ray.__version__, "the image's Ray must equal the Ray this repo is tested with"


def test_dockerfile_installs_the_project_the_readmes_way() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    runs = [rest for word, rest in dockerfile_instructions(text) if word == "RUN"]
    installs = [i for r in runs for i in pip_installs(r)]
    assert len(installs) == 1, f"the image installs exactly the project, nothing on the side: {installs}"
    source, readme = readme_install()
    assert editable_target(installs[0]) == editable_target(readme) == ".", (installs, source, readme)
    workdir = [rest for word, rest in dockerfile_instructions(text) if word == "WORKDIR"][-1]
    copies = [rest.split()[-2:] for word, rest in dockerfile_instructions(text) if word == "COPY"]
    assert [".", workdir] in copies, "the repo is copied where `pip install -e .` runs"


def test_dockerignore_leaves_out_what_the_runtime_env_leaves_out() -> None:
    from platform.raystart import RUNTIME_ENV_EXCLUDES

    ignored = {line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert set(RUNTIME_ENV_EXCLUDES) - {"node_modules"} <= ignored | {"node_modules"}, ignored


# --------------------------------------------------------------------------- compose

def test_compose_has_mlflow_on_postgres_with_an_artifact_volume(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "study"} <= set(services)
    command = " ".join(services["mlflow"]["command"])
    backend = re.search(r"--backend-store-uri[= ](\S+)", command).group(1)
    assert backend.startswith("postgresql") and "@postgres:" in backend
    destination = re.search(r"--artifacts-destination[= ](\S+)", command).group(1)
    volumes = [v.split(":") for v in services["mlflow"]["volumes"]]
    assert any(target == destination and name in compose["volumes"] for name, target in volumes)
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in services["postgres"], "the database is reachable from the compose network only"


def test_compose_publishes_ports_on_loopback_only(compose: dict) -> None:
    published = [(name, p) for name, s in compose["services"].items() for p in s.get("ports", [])]
    assert published, "the MLflow UI is published"
    assert all(str(p).startswith("127.0.0.1:") for _, p in published), published
    mlflow_port = re.search(r"--port[= ](\d+)", " ".join(compose["services"]["mlflow"]["command"])).group(1)
    assert f"127.0.0.1:{mlflow_port}:{mlflow_port}" in compose["services"]["mlflow"]["ports"]


def test_compose_gpu_workers_reserve_nvidia_devices(compose: dict) -> None:
    devices = compose["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "--address=ray-head:" in compose["services"]["ray-worker"]["command"]


def test_compose_driver_runs_the_cli_with_the_servers_it_names(compose: dict) -> None:
    services = compose["services"]
    study = services["study"]
    env = study["environment"]
    command = " ".join(study["command"]) if isinstance(study["command"], list) else study["command"]
    assert "python -m platform.run" in command
    # The env vars the code and MLflow read, passed to the CLI's flags ($$ = a literal $ in compose).
    assert '--address "$$RAY_ADDRESS"' in command and '--tracking-uri "$$MLFLOW_TRACKING_URI"' in command
    assert "--storage /shared/" in command
    head_port = re.search(r"--port=(\d+)", services["ray-head"]["command"]).group(1)
    assert env["RAY_ADDRESS"] == f"ray-head:{head_port}"
    mlflow_port = re.search(r"--port[= ](\d+)", " ".join(services["mlflow"]["command"])).group(1)
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
    allowed = re.search(r"--allowed-hosts[= ](\S+)", " ".join(services["mlflow"]["command"])).group(1)
    assert f"mlflow:{mlflow_port}" in allowed.split(","), "MLflow must accept the Host header it is called with"
    # Every Ray container runs the project image and shares the storage volume.
    for name in ("ray-head", "ray-worker", "study"):
        assert services[name]["image"] == "ltbias:latest"
        assert any(v.endswith(":/shared") for v in services[name]["volumes"])


def test_compose_driver_flags_exist_in_the_cli(compose: dict) -> None:
    from platform.run import build_parser

    known = {o for a in build_parser()._actions for o in a.option_strings}
    command = " ".join(compose["services"]["study"]["command"])
    assert set(re.findall(r"(--[a-z-]+)", command.split("platform.run", 1)[1])) <= known


# --------------------------------------------------------------------------- ray up

def test_cluster_file_has_a_head_and_gpu_workers(cluster: dict) -> None:
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in workers)
    assert cluster["provider"]["type"] in {"aws", "gcp", "azure", "local"}


def test_cluster_file_mounts_the_repo_and_installs_it_like_the_image(cluster: dict) -> None:
    mounts = cluster["file_mounts"]
    repo_targets = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert len(repo_targets) == 1
    installs = [i for c in cluster["setup_commands"] for i in pip_installs(c)]
    assert len(installs) == 1 and editable_target(installs[0]) == repo_targets[0]
    assert {".venv", "outputs", ".git"} <= set(cluster["rsync_exclude"])
    image = dockerfile_base_image((DOCKER / "Dockerfile").read_text())
    assert cluster["docker"]["image"] == image, "the cluster runs the Dockerfile's base image"
    starts = " ".join(cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts


# --------------------------------------------------------------------------- docs

@pytest.mark.parametrize("doc", ["docker/README.md", "README.md"])
def test_documented_commands_use_real_cli_flags(doc: str) -> None:
    from platform.run import build_parser

    known = {o for a in build_parser()._actions for o in a.option_strings}
    text = (REPO / doc).read_text().replace("\\\n", " ")
    commands = re.findall(r"python -m platform\.run[^\n`]*", text)
    assert commands
    used = {f for c in commands for f in re.findall(r"\s(--[a-z][a-z-]*)", c)}
    assert used <= known, used - known


def test_the_install_parser_reads_real_commands() -> None:
    assert pip_installs("pip install --no-cache-dir --extra-index-url ${X} -e .") == [["-e", "."]]
    assert pip_installs("$(PY) -m pip install --quiet -e '.[dev]'") == [["-e", ".[dev]"]]
    assert pip_installs("pip install torch && pip install -e .") == [["torch"], ["-e", "."]]
    with pytest.raises(AssertionError):
        editable_target(["-e", ".", "torch"])


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


# --------------------------------------------------------------------------- security

def _env_values(compose: dict) -> list[tuple[str, str, str]]:
    out = []
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        out += [(name, k, str(v)) for k, v in items]
    return out


def test_compose_ray_uses_token_auth_with_the_token_from_the_environment(compose: dict) -> None:
    for name in ("ray-head", "ray-worker", "study"):
        env = compose["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?[^}]+\}", env["RAY_AUTH_TOKEN"]), env["RAY_AUTH_TOKEN"]
    text = (DOCKER / "compose.yaml").read_text()
    assert "RAY_AUTH_MODE: disabled" not in text


def test_compose_secrets_have_no_defaults_and_stay_off_command_lines(compose: dict) -> None:
    secrets = [(s, k, v) for s, k, v in _env_values(compose) if re.search(r"PASSWORD|TOKEN", k)]
    assert secrets
    for service, key, value in secrets:  # ${VAR:?message}: compose stops when VAR is unset
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), (service, key, value)
    for name, service in compose["services"].items():
        command = service.get("command") or ""
        command = " ".join(command) if isinstance(command, list) else command
        assert "PASSWORD" not in command and "TOKEN" not in command, name
        assert not re.search(r"://[^/@\s:]+:[^/@\s]+@", command), f"{name}: a password in a URI"


def test_compose_publishes_nothing_that_runs_code(compose: dict) -> None:
    published = {str(p).rsplit(":", 1)[-1] for s in compose["services"].values() for p in s.get("ports", [])}
    assert published == {"5000"}, published  # the MLflow UI only: no dashboard/Jobs API, no Ray client
    head = compose["services"]["ray-head"]["command"]
    assert "--dashboard-host=127.0.0.1" in head and "--ray-client-server-port" not in head


def test_compose_mlflow_server_requires_authentication(compose: dict) -> None:
    mlflow = compose["services"]["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in mlflow["environment"]
    study_env = compose["services"]["study"]["environment"]
    assert study_env["MLFLOW_TRACKING_USERNAME"] and "MLFLOW_TRACKING_PASSWORD" in study_env


def test_images_run_without_sudo_and_ray_requires_a_token() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "sudo" not in [w for _, args in dockerfile_instructions(text) for w in args.split()]
    assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_MODE=disabled" not in text


def test_cluster_file_starts_ray_with_token_auth(cluster: dict) -> None:
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    for command in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=" in command, command
    token = [remote for remote in cluster["file_mounts"] if remote.endswith("auth_token")]
    assert token, "the token file is copied to every node"
