"""deploy/: the hardened unit against systemd-analyze, and the Debian package built, installed
into a scratch root with dpkg (maintainer scripts run chrootless, DPKG_ROOT set), reinstalled,
removed and purged.

Nothing here touches the host's system: dpkg gets --root and --log in tmp_path, and the
maintainer scripts leave the host's systemd alone whenever DPKG_ROOT is set. Run as non-root,
dpkg and the ownership checks go through one fakeroot session per scratch root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "charger-gateway.service"
NAME = "charger-gateway"
VENV = Path("opt/charger-gateway/venv")
ETC = Path("etc/charger-gateway")
HOST_UNITS = Path("/usr/lib/systemd/system")
SECURITY_LIMIT = 3.0  # systemd-analyze's "OK" band ends here

# An installer's finished config: what check-config must pass on the installed venv.
SITE_CONFIG = """\
charge_point: {identity: CP-SITE-01, vendor: ExampleVendor, model: Cluster-2}
backend: {url: "wss://csms.example.net/ocpp", password_file: backend-password}
buses: [{name: rs485-1, kind: rtu, port: /dev/ttyS1}]
connectors: [{id: 1, bus: rs485-1, unit: 1, profile: heidelberg-energy-control}]
storage: {path: /var/lib/charger-gateway/gateway.db}
"""
SITE_PASSWORD = "correct-horse-battery-staple\n"
CONFIG_FAULT = re.compile(r"^error: (?P<file>.+?):(?P<line>\d+): (?P<key>\S+): (?P<message>.+)$", re.MULTILINE)


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)


def require(tool: str, package: str) -> None:
    """CI must run these checks (.ci/run installs the tools), so a missing tool fails, with the fix."""
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing: apt-get install {package}")


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> every value it is given (a key may repeat), over all sections of a unit file."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def with_host_parts(root: Path) -> None:
    """What verify needs besides the package, as systemd and procps bring it: the units ours
    refers to (sysinit.target, multi-user.target, ...) and kill (ExecReload)."""
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy(shutil.which("kill") or "/bin/kill", root / "bin/kill")


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return run(["systemd-analyze", "verify", f"--root={root}", f"{NAME}.service"])


class ScratchRoot:
    """A root file system in tmp_path that dpkg installs into, with what base-passwd gives every
    Debian system: root, and the dialout group at its fixed gid 20."""

    def __init__(self, path: Path) -> None:
        self.path = path
        admin = path / "var/lib/dpkg"
        for sub in ("info", "updates", "triggers"):
            (admin / sub).mkdir(parents=True)
        for name in ("status", "available"):
            (admin / name).touch()
        (path / "etc").mkdir()
        (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (path / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
        state = path.parent / f"{path.name}.fakeroot"
        state.touch()
        self._as_root = [] if os.geteuid() == 0 else ["fakeroot", "-i", str(state), "-s", str(state)]
        if self._as_root:
            require("fakeroot", "fakeroot")

    def __truediv__(self, relative: str | Path) -> Path:
        return self.path / relative

    def dpkg(self, *args: str) -> None:
        argv = [*self._as_root, "dpkg", f"--root={self.path}", f"--log={self.path.parent / 'dpkg.log'}", "--force-script-chrootless", *args]
        result = run(argv)
        assert result.returncode == 0, f"{' '.join(argv)}\n{result.stdout}{result.stderr}"

    def status(self) -> str:
        """The package's dpkg status ('install ok installed', 'deinstall ok config-files'), '' when unknown."""
        result = run(["dpkg-query", f"--admindir={self / 'var/lib/dpkg'}", "-W", "-f=${Status}", NAME])
        return result.stdout if result.returncode == 0 else ""

    def owner_and_mode(self, relative: str | Path) -> tuple[int, int, int]:
        """(uid, gid, permission bits) as dpkg and the maintainer scripts set them."""
        result = run([*self._as_root, "stat", "-c", "%u %g %a", str(self / relative)])
        assert result.returncode == 0, result.stderr
        uid, gid, mode = result.stdout.split()
        return int(uid), int(gid), int(mode, 8)

    def ids(self, file: str, name: str) -> list[str]:
        """The fields of `name`'s line in the root's /etc/passwd or /etc/group."""
        for line in (self / "etc" / file).read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return fields
        raise AssertionError(f"{name} is not in the scratch root's /etc/{file}")

    def check_config(self) -> subprocess.CompletedProcess[str]:
        """`python -m gateway check-config` on the installed conffile, with the installed venv alone (-I: not this checkout)."""
        return run([str(self / VENV / "bin/python"), "-I", "-m", "gateway", "check-config", str(self / ETC / "gateway.yaml")], cwd=self.path.parent)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built once by the script `make deb` runs (into tmp: parallel runs cannot clash)."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is missing (Debian's dpkg package): the .deb cannot be built")
    out = tmp_path_factory.mktemp("deb")
    # xz at level 1: the same package a few seconds sooner (dpkg-deb's default level takes 4 s here).
    env = {**os.environ, "DEB_BUILD_DIR": str(out / "build"), "DEB_OUT_DIR": str(out / "dist"), "DPKG_DEB_COMPRESSOR_LEVEL": "1"}
    result = run([str(DEPLOY / "build-deb.sh")], env=env, timeout=280)
    assert result.returncode == 0, result.stderr
    package = Path(result.stdout.strip().splitlines()[-1])
    print(f"built {package.name}: {package.stat().st_size / 1e6:.1f} MB")
    return package


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> ScratchRoot:
    root = ScratchRoot(tmp_path_factory.mktemp("installed") / "root")
    root.dpkg("--force-depends", "--install", str(deb))  # python3 and systemd are the host's, not in the scratch root
    return root


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants every command to exist: a root with a stand-in /usr/bin/charger-gateway,
    # the host's parts, and the unit exactly as it is in deploy/.
    require("systemd-analyze", "systemd")
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    with_host_parts(root)
    stand_in = root / "usr/bin" / NAME
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system")

    result = verify(root)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    stand_in.unlink()  # the check has teeth: a missing ExecStart fails it
    assert verify(root).returncode != 0


def test_unit_security_exposure_is_ok() -> None:
    require("systemd-analyze", "systemd")
    result = run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)])
    assert result.returncode == 0, result.stderr
    found = re.search(rf"Overall exposure level for {NAME}\.service: (\d+\.\d+) (\w+)", result.stdout)
    assert found is not None, result.stdout
    exposure = float(found[1])
    print(f"systemd-analyze security: {exposure} {found[2]} (limit {SECURITY_LIMIT})")
    assert exposure <= SECURITY_LIMIT, result.stdout


def test_unit_keeps_what_the_daemon_relies_on() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]  # READY=1, WATCHDOG=1 from the daemon
    assert unit["WatchdogSec"] and unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"] == [f"/usr/bin/{NAME} run -c /etc/{NAME}/gateway.yaml"]
    assert unit["RestartPreventExitStatus"] == ["78"]  # EX_CONFIG: no restart loop on a broken config
    assert unit["User"] == unit["Group"] == [NAME] and unit["SupplementaryGroups"] == ["dialout"]
    for key in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):  # database, control socket, config
        assert unit[key] == [NAME]
    assert {"char-ttyS rw", "char-ttyUSB rw", "char-ttyACM rw"} <= set(unit["DeviceAllow"])
    assert set(unit["RestrictAddressFamilies"][0].split()) >= {"AF_UNIX", "AF_INET", "AF_INET6"}
    # Not these: they would hide the serial lines, drop the dialout group, hide the boot id (gateway.clock)
    # or cut the way to the backend.
    assert not {"PrivateDevices", "PrivateUsers", "ProcSubset", "IPAddressDeny", "PrivateNetwork"} & unit.keys()


def test_polkit_rule_allows_the_service_to_reboot_and_nothing_more() -> None:
    # Evaluated in a real JavaScript engine (Node; polkit has its own) against a stand-in polkit.
    require("node", "nodejs")
    probe = """
    const rules = [];
    const polkit = {Result: {YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", NOT_HANDLED: null}, addRule: (rule) => rules.push(rule)};
    new Function("polkit", require("fs").readFileSync(process.argv[1], "utf8"))(polkit);
    const ask = ([id, user]) => rules.map((rule) => rule({id: id}, {user: user})).find((answer) => answer !== null) ?? null;
    console.log(JSON.stringify(JSON.parse(process.argv[2]).map(ask)));
    """
    asked = [
        ["org.freedesktop.login1.reboot", NAME],
        ["org.freedesktop.login1.reboot-multiple-sessions", NAME],
        ["org.freedesktop.login1.reboot-ignore-inhibit", NAME],
        ["org.freedesktop.login1.power-off", NAME],
        ["org.freedesktop.systemd1.manage-units", NAME],
        ["org.freedesktop.login1.reboot", "www-data"],
    ]
    result = run(["node", "-e", probe, str(DEPLOY / "polkit.rules"), json.dumps(asked)])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["yes", "yes", None, None, None, None]


def test_package_is_small_and_declares_its_conffile(deb: Path) -> None:
    assert deb.stat().st_size < 5e6  # about 2 MB: the venv's wheels; a stray cache or venv would be tens
    listing = run(["dpkg-deb", "--contents", str(deb)]).stdout
    paths = [line.split()[5] for line in listing.splitlines()]
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in paths if "/site-packages/pip/" in p or "/site-packages/setuptools/" in p]
    assert not [p for p in paths if "/site-packages/tests/" in p]
    assert "./opt/charger-gateway/venv/lib/python3.11/site-packages/gateway/profiles/heidelberg-energy-control.yaml" in paths

    conffiles = run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout.split()
    assert conffiles == [f"/etc/{NAME}/gateway.yaml"]
    control = run(["dpkg-deb", "--field", str(deb), "Depends", "Recommends"]).stdout
    assert "python3 (>= 3.11), python3 (<< 3.12)" in control  # the venv's minor version, no other
    assert "Recommends: python3-systemd" in control


def test_install_lays_out_the_files(installed: ScratchRoot) -> None:
    assert installed.status() == "install ok installed"
    assert os.readlink(installed / f"usr/bin/{NAME}") == f"/{VENV}/bin/{NAME}"
    entry_point = (installed / VENV / f"bin/{NAME}").read_text()
    assert entry_point.startswith(f"#!/{VENV}/bin/python\n")  # the staging path rewritten away
    assert (installed / VENV / "pyvenv.cfg").read_text().count(str(installed.path)) == 0
    imported = run([str(installed / VENV / "bin/python"), "-I", "-c", "import gateway; print(gateway.__file__)"], cwd=ROOT)
    assert Path(imported.stdout.strip()).is_relative_to(installed / VENV), imported.stderr  # the package's, not this checkout
    assert (installed / f"lib/systemd/system/{NAME}.service").read_bytes() == UNIT.read_bytes()
    assert (installed / f"usr/lib/sysusers.d/{NAME}.conf").is_file()
    assert (installed / f"usr/share/polkit-1/rules.d/{NAME}.rules").read_bytes() == (DEPLOY / "polkit.rules").read_bytes()
    assert (installed / ETC / "gateway.yaml").read_bytes() == (DEPLOY / "gateway.yaml").read_bytes()
    conffiles = run(["dpkg-query", f"--admindir={installed / 'var/lib/dpkg'}", "-W", "-f=${Conffiles}", NAME]).stdout
    assert f"/etc/{NAME}/gateway.yaml" in conffiles


def test_installed_venv_imports_every_module(installed: ScratchRoot) -> None:
    # A dependency imported somewhere but missing from setup.cfg's install_requires fails here, not on site.
    probe = (
        "import importlib, pkgutil, gateway\n"
        "for module in pkgutil.walk_packages(gateway.__path__, 'gateway.'):\n"
        "    if not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
    )
    result = run([str(installed / VENV / "bin/python"), "-I", "-c", probe], cwd=installed.path.parent)
    assert result.returncode == 0, result.stderr


def test_install_creates_the_user_in_dialout(installed: ScratchRoot) -> None:
    user = installed.ids("passwd", NAME)
    assert user[5:] == [f"/var/lib/{NAME}", "/usr/sbin/nologin"]
    assert installed.ids("group", NAME)[2] == user[3]  # its own primary group
    dialout = installed.ids("group", "dialout")
    assert dialout[2] == "20" and NAME in dialout[3].split(",")


def test_install_keeps_config_and_secret_private(installed: ScratchRoot) -> None:
    uid, gid = int(installed.ids("passwd", NAME)[2]), int(installed.ids("group", NAME)[2])
    assert installed.owner_and_mode(ETC) == (0, gid, 0o750)
    assert installed.owner_and_mode(ETC / "gateway.yaml") == (0, gid, 0o640)
    assert installed.owner_and_mode(ETC / "backend-password") == (uid, gid, 0o600)
    assert installed.owner_and_mode(ETC / "profiles")[2] == 0o755  # the site's own device profiles, read by the daemon
    assert (installed / ETC / "backend-password").read_text() == ""  # a placeholder for the installer


def test_installed_venv_reports_what_the_installer_must_fill_in(installed: ScratchRoot) -> None:
    result = installed.check_config()
    assert result.returncode == 78, result.stderr  # EX_CONFIG: the unit will not start, nor restart
    faults = {m["key"]: m for m in CONFIG_FAULT.finditer(result.stderr)}
    assert {"charge_point.identity", "charge_point.vendor", "charge_point.model", "backend.url", "connectors"} <= faults.keys()
    lines = (installed / ETC / "gateway.yaml").read_text().splitlines()
    for key, fault in faults.items():  # each at the file, line and key the installer edits
        leaf = key.rsplit(".", 1)[-1].split("[")[0]
        assert fault["file"] == str(installed / ETC / "gateway.yaml")
        assert f"{leaf}:" in lines[int(fault["line"]) - 1], (key, fault["line"])


def test_installed_unit_finds_its_command(installed: ScratchRoot) -> None:
    # The installed unit, its ExecStart resolved through the package's /usr/bin link into the venv.
    require("systemd-analyze", "systemd")
    with_host_parts(installed.path)
    result = verify(installed.path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_install_enables_the_unit(installed: ScratchRoot) -> None:
    if shutil.which("deb-systemd-helper") is None:
        pytest.skip("deb-systemd-helper is missing (init-system-helpers): postinst enables the unit only with a running systemd")
    link = installed / f"etc/systemd/system/multi-user.target.wants/{NAME}.service"
    assert os.readlink(link) == f"/lib/systemd/system/{NAME}.service"


def test_reinstall_remove_and_purge(deb: Path, tmp_path: Path) -> None:
    root = ScratchRoot(tmp_path / "root")
    root.dpkg("--force-depends", "--install", str(deb))

    # The installer's work, and the daemon's state.
    (root / ETC / "gateway.yaml").write_text(SITE_CONFIG)
    (root / ETC / "backend-password").write_text(SITE_PASSWORD)
    (root / f"var/lib/{NAME}").mkdir(parents=True)
    (root / f"var/lib/{NAME}/gateway.db").write_bytes(b"SQLite format 3\0")
    result = root.check_config()
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr

    # An upgrade (here the same version again) keeps the edited conffile and the password.
    root.dpkg("--force-depends", "--install", str(deb))
    assert (root / ETC / "gateway.yaml").read_text() == SITE_CONFIG
    assert (root / ETC / "backend-password").read_text() == SITE_PASSWORD
    gid = int(root.ids("group", NAME)[2])
    assert root.owner_and_mode(ETC) == (0, gid, 0o750)
    assert root.owner_and_mode(ETC / "backend-password")[1:] == (gid, 0o600)

    # Remove: the code goes, even the .pyc files check-config wrote; config, secret and state stay.
    root.check_config()
    assert list((root / VENV / "lib").rglob("__pycache__"))
    root.dpkg("--remove", NAME)
    assert root.status() == "deinstall ok config-files"
    assert not (root / "opt/charger-gateway").exists()
    assert not os.path.lexists(root / f"usr/bin/{NAME}")
    assert not (root / f"lib/systemd/system/{NAME}.service").exists()
    assert (root / ETC / "gateway.yaml").read_text() == SITE_CONFIG
    assert (root / ETC / "backend-password").read_text() == SITE_PASSWORD
    assert (root / f"var/lib/{NAME}/gateway.db").exists()

    # Purge: nothing of the package is left, but the user (Debian's practice).
    root.dpkg("--purge", NAME)
    assert root.status() == ""
    leftovers = [p for p in root.path.rglob(f"*{NAME}*") if not p.is_relative_to(root / "var/lib/dpkg")]
    assert leftovers == []
    assert root.ids("passwd", NAME)
