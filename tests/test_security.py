"""Security defaults, checked over the source tree (AST, not grep, so comments and strings don't count):
checkpoints load with ``weights_only=True``, YAML is safe-loaded, no shell is ever started, and
nothing of ours binds a server to all interfaces."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("platform", "trainables", "dashboards", "benchmarks")
SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
SAFE_LOADERS = {"SafeLoader", "CSafeLoader"}


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted callee name, call node) of every call in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            out.append((_dotted(node.func), node))
    return out


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _where(path: Path, call: ast.Call) -> str:
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{call.lineno}"


def _violations(check, sources: list[Path] = SOURCES) -> list[str]:
    return [_where(path, call) for path in sources for name, call in _calls(path) if check(name, call)]


def unsafe_torch_load(name: str, call: ast.Call) -> bool:
    """torch.load without weights_only=True (unpickling a checkpoint can run arbitrary code)."""
    if not name.endswith("torch.load"):
        return False
    flag = _keyword(call, "weights_only")
    return not (isinstance(flag, ast.Constant) and flag.value is True)


def unsafe_yaml(name: str, call: ast.Call) -> bool:
    """yaml.load without a safe Loader, yaml.unsafe_load / full_load, or a non-safe Loader made."""
    if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all",
                "yaml.Loader", "yaml.FullLoader", "yaml.UnsafeLoader"):
        return True
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        return loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_LOADERS
    return False


def starts_a_shell(name: str, call: ast.Call) -> bool:
    """os.system / os.popen, or a subprocess call with shell=True."""
    if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
        return True
    flag = _keyword(call, "shell")
    return name.startswith("subprocess.") and not (isinstance(flag, ast.Constant) and not flag.value) \
        and flag is not None


def test_the_scan_sees_the_project_sources() -> None:
    names = {p.relative_to(REPO).as_posix() for p in SOURCES}
    assert {"trainables/trainable.py", "trainables/checkpoint.py", "platform/spec.py", "platform/run.py"} <= names


def test_every_torch_load_uses_weights_only_true() -> None:
    assert _violations(unsafe_torch_load) == []


def test_yaml_is_only_safe_loaded() -> None:
    assert _violations(unsafe_yaml) == []


def test_no_shell_is_started() -> None:
    assert _violations(starts_a_shell) == []


LOOPBACK = {"127.0.0.1", "localhost", "::1"}
HOST_FLAGS = {"--host", "--dashboard-host", "--bind"}
HOST_KEYWORDS = {"host", "dashboard_host", "bind"}


def _module_constants(tree: ast.Module) -> dict[str, object]:
    """NAME = <constant> (and A, B = <constant>, <constant>) assignments at module level."""
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
                out[target.id] = node.value.value
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                out.update({t.id: v.value for t, v in zip(target.elts, node.value.elts)
                            if isinstance(t, ast.Name) and isinstance(v, ast.Constant)})
    return out


def server_binds(path: Path) -> list[str]:
    """Where ``path`` binds a server beyond loopback by default: a --host flag whose default is not
    loopback, or a host= keyword set to a literal that is not loopback."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = _module_constants(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        flags = {a.value for a in node.args if isinstance(a, ast.Constant)}
        if _dotted(node.func).endswith("add_argument") and flags & HOST_FLAGS:
            default = _keyword(node, "default")
            value = (default.value if isinstance(default, ast.Constant)
                     else constants.get(default.id) if isinstance(default, ast.Name) else None)
            if value not in LOOPBACK:
                found.append(f"{path.name}:{node.lineno} default {value!r}")
        for k in node.keywords:
            if k.arg in HOST_KEYWORDS and isinstance(k.value, ast.Constant) and k.value.value not in LOOPBACK:
                found.append(f"{path.name}:{node.lineno} {k.arg}={k.value.value!r}")
    return found


def test_servers_of_ours_bind_loopback_unless_asked() -> None:
    # The MLflow UI (platform.ui) and anything else we start listens on this machine only;
    # exposing it is the user's explicit --host choice.
    assert [f for path in SOURCES for f in server_binds(path)] == []
    from platform.ui import build_parser, server_command

    host = build_parser().parse_args([]).host
    assert host in LOOPBACK
    cmd = server_command("sqlite:///x.db", host, 5000)
    assert cmd[cmd.index("--host") + 1] in LOOPBACK


def test_local_ray_starts_without_a_dashboard() -> None:
    # A local Ray's dashboard would listen on a port of its own; the local run does not need it.
    inits = [c for name, c in _calls(REPO / "platform" / "raystart.py") if name == "ray.init"]
    local = [c for c in inits if _keyword(c, "address") is None]
    assert local and all(isinstance(_keyword(c, "include_dashboard"), ast.Constant)
                         and _keyword(c, "include_dashboard").value is False for c in local)


@pytest.mark.parametrize("snippet,bad", [
    ("p.add_argument('--host', default='0.0.0.0')", True),
    ("HOST = '0.0.0.0'\np.add_argument('--host', default=HOST)", True),
    ("HOST = '127.0.0.1'\np.add_argument('--host', default=HOST)", False),
    ("serve(app, host='0.0.0.0')", True),
    ("serve(app, host='127.0.0.1')", False),
    ("HOST, PORT = '0.0.0.0', 80\np.add_argument('--host', default=HOST)", True),
])
def test_the_bind_check_catches_all_interface_defaults(tmp_path: Path, snippet: str, bad: bool) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(snippet + "\n")
    assert bool(server_binds(probe)) is bad


@pytest.mark.parametrize("snippet,check,caught", [
    ("torch.load(p)", unsafe_torch_load, True),
    ("torch.load(p, weights_only=False)", unsafe_torch_load, True),
    ("torch.load(p, map_location='cpu', weights_only=True)", unsafe_torch_load, False),
    ("yaml.load(s)", unsafe_yaml, True),
    ("yaml.load(s, Loader=yaml.FullLoader)", unsafe_yaml, True),
    ("yaml.load(s, Loader=yaml.SafeLoader)", unsafe_yaml, False),
    ("yaml.unsafe_load(s)", unsafe_yaml, True),
    ("yaml.safe_load(s)", unsafe_yaml, False),
    ("subprocess.run(c, shell=True)", starts_a_shell, True),
    ("subprocess.run(['git', 'rev-parse'], check=True)", starts_a_shell, False),
    ("os.system(c)", starts_a_shell, True),
])
def test_the_checks_catch_what_they_look_for(tmp_path: Path, snippet: str, check, caught: bool) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(snippet + "\n")
    assert bool(_violations(check, [probe])) is caught
