"""deploy/: the hardened unit against systemd-analyze, and the Debian package built, installed
into a scratch root with dpkg (maintainer scripts run chrootless, DPKG_ROOT set), upgraded and
rolled back through the firmware-update path, removed and purged.

Nothing here touches the host's system: dpkg gets --root (or DPKG_ROOT) and --log in tmp_path,
and the maintainer scripts leave the host's systemd alone whenever DPKG_ROOT is set. Run as
non-root, dpkg and the ownership checks go through one fakeroot session per scratch root.
The firmware path's systemctl start cannot run here (no systemd as PID 1): its unit is
verified, its polkit rule asked of a real polkitd (in private namespaces: root only), and
the root script it starts run for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.settings import FirmwareSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "charger-gateway.service"
INSTALL_UNIT = DEPLOY / "charger-gateway-install@.service"
NAME = "charger-gateway"
LIBEXEC = Path("usr/lib/charger-gateway")
FIRMWARE = Path("var/lib/charger-gateway/firmware")  # the daemon's images: storage.path's directory / firmware
REQUEST_INSTALL = f"/{LIBEXEC}/request-firmware-install"
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
firmware: {install_command: [/usr/lib/charger-gateway/request-firmware-install, "{file}"]}
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


def verify(root: Path, unit: str = f"{NAME}.service") -> subprocess.CompletedProcess[str]:
    return run(["systemd-analyze", "verify", f"--root={root}", unit])


def install_unit(image: str) -> str:
    """The instance of charger-gateway-install@.service that installs `image`, named as request-firmware-install names it."""
    result = run(["systemd-escape", f"--template={INSTALL_UNIT.name}", "--path", image])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# In private mount, PID and network namespaces, with the work directory $1: its rules.d where polkitd reads rules
# (nothing else there), its passwd that knows the test's users, a D-Bus system bus of its own (an abstract socket:
# polkitd, which drops to its own user, reaches it whatever the work directory's mode), polkitd on it, and for
# each question a process of its user (the subject, as the daemon is when it runs systemctl). A question comes on
# stdin as "uid<TAB>action-id<TAB>unit<TAB>verb"; its answer is pkcheck's exit status and message. Whatever
# was started here ends with the PID namespace (also when the test times out: --kill-child).
POLKIT_PROBE = r"""
set -eu
work=$1
mkdir -m 0755 "$work/no-rules.d"
mount --bind "$work/rules.d" /usr/share/polkit-1/rules.d
mount --bind "$work/no-rules.d" /etc/polkit-1/rules.d
mount --bind "$work/passwd" /etc/passwd
bus=charger-gateway-polkit-test
conf=$work/bus.conf
cat >"$conf" <<EOF
<busconfig>
  <listen>unix:abstract=$bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy>
</busconfig>
EOF
export DBUS_SYSTEM_BUS_ADDRESS=unix:abstract=$bus
dbus-daemon --config-file="$conf" --nofork 2>/dev/null &
/usr/lib/polkit-1/polkitd --no-debug &
tries=0
until dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner \
    string:org.freedesktop.PolicyKit1 2>/dev/null | grep -q 'boolean true'; do
    tries=$((tries + 1))
    [ "$tries" -lt 200 ] || { echo "polkitd did not come up on the test bus" >&2; exit 1; }
    sleep 0.05
done
tab=$(printf '\t')
while IFS=$tab read -r uid action unit verb; do
    setpriv --reuid="$uid" --regid="$uid" --clear-groups sleep 60 &
    subject=$!
    until [ "$(awk '/^Uid:/ { print $2 }' "/proc/$subject/status")" = "$uid" ]; do sleep 0.01; done
    set -- --action-id "$action" --process "$subject"
    [ -z "$unit" ] || set -- "$@" --detail unit "$unit" --detail verb "$verb"
    status=0
    message=$(pkcheck "$@" 2>&1) || status=$?
    kill "$subject"
    echo "$status $message" | head -n 1
done
"""
ADMIN = "an administrator's password"  # pkcheck's exit status 2: authorization needs authentication
PKCHECK_ANSWERS = {"0": "yes", "2": ADMIN}  # 1 would be "no", which the rule never says: anything else is shown as it is


def ask_polkitd(rules: Path, questions: list[tuple[str, str, dict[str, str]]], tmp_path: Path) -> list[str]:
    """What the real polkitd answers to each (action id, user name, details) with `rules` as its only rule file:
    "yes", ADMIN, or pkcheck's exit status and message."""
    require("pkcheck", "polkitd")
    require("dbus-daemon", "dbus-daemon")
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace for polkitd's rules directory needs root")
    directory = tmp_path / "rules.d"
    directory.mkdir()
    directory.chmod(0o755)  # polkitd reads it as its own user
    shutil.copy(rules, directory / f"{NAME}.rules")
    # The host's users (polkitd's own among them) and the test's, each at a uid the host does not use.
    host = [line.split(":") for line in Path("/etc/passwd").read_text().splitlines() if line.count(":") == 6]
    users = sorted({user for _, user, _ in questions})
    free = (str(uid) for uid in range(60000, 65000) if str(uid) not in {fields[2] for fields in host})
    uids = dict(zip(users, free, strict=False))
    passwd = tmp_path / "passwd"
    lines = [fields for fields in host if fields[0] not in uids] + [[user, "x", uid, uid, "", "/", "/usr/sbin/nologin"] for user, uid in uids.items()]
    passwd.write_text("".join(":".join(fields) + "\n" for fields in lines))
    passwd.chmod(0o644)
    asked = "".join("\t".join([uids[user], action, details.get("unit", ""), details.get("verb", "")]) + "\n" for action, user, details in questions)
    argv = ["unshare", "--mount", "--propagation=private", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "sh", "-c", POLKIT_PROBE, "polkit-probe", str(tmp_path)]
    result = subprocess.run(argv, input=asked, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip(f"no private namespaces here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    answers = [line.partition(" ") for line in result.stdout.splitlines()]
    return [PKCHECK_ANSWERS.get(status, f"{status} {message}") for status, _, message in answers]


def build_deb(tree: Path, deb: Path) -> Path:
    """A .deb of `tree` (DEBIAN/ and the files), owned by root, uncompressed: quick to make and to read."""
    result = run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(tree), str(deb)])
    assert result.returncode == 0, result.stderr
    return deb


def tiny_deb(directory: Path, package: str) -> Path:
    """A package with a control file and one file, the least dpkg-deb builds."""
    tree = directory / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: test <test@localhost>\nDescription: a test package\n"
    )
    (tree / f"usr/share/{package}").mkdir(parents=True)
    (tree / f"usr/share/{package}/README").write_text("test\n")
    return build_deb(tree, directory / f"{package}_1.0_all.deb")


def install_firmware(script: Path, image: Path, root: Path, as_root: list[str] | None = None, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The root script the install unit runs, on `image`, with `root` as DPKG_ROOT (dpkg's own variable for the
    root it installs into). `home` may hold a .dpkg.cfg: dpkg's per-user options."""
    env = {**os.environ, "DPKG_ROOT": str(root)}
    if home is not None:
        env["HOME"] = str(home)
    return run([*(as_root or []), str(script), str(image)], env=env)


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

    def install_firmware(self, image: Path) -> subprocess.CompletedProcess[str]:
        """The installed install-firmware on an image in this root, as charger-gateway-install@.service runs it.
        What dpkg() gives on the command line comes from dpkg's per-user config file instead."""
        home = self.path.parent / "home"
        home.mkdir(exist_ok=True)
        (home / ".dpkg.cfg").write_text(f"log {self.path.parent / 'dpkg.log'}\nforce-script-chrootless\nforce-depends\n")
        return install_firmware(self / LIBEXEC / "install-firmware", image, self.path, self._as_root, home)

    def version(self) -> str:
        return run(["dpkg-query", f"--admindir={self / 'var/lib/dpkg'}", "-W", "-f=${Version}", NAME]).stdout

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
def newer_deb(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as its next version comes from the backend: a later version whose packaged config changed
    (so dpkg meets a conffile both the site and the package changed). Repacked: a second build takes seconds."""
    work = tmp_path_factory.mktemp("newer")
    tree = work / "tree"
    result = run(["dpkg-deb", "--raw-extract", str(deb), str(tree)])
    assert result.returncode == 0, result.stderr
    control = tree / "DEBIAN/control"
    version = re.search(r"^Version: (.+)$", control.read_text(), re.MULTILINE)
    arch = re.search(r"^Architecture: (.+)$", control.read_text(), re.MULTILINE)
    assert version is not None and arch is not None
    control.write_text(control.read_text().replace(f"Version: {version[1]}\n", f"Version: {version[1]}+fw1\n"))
    with (tree / ETC / "gateway.yaml").open("a") as config:
        config.write("# a line the next version adds\n")
    return build_deb(tree, work / f"{NAME}_{version[1]}+fw1_{arch[1]}.deb")


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> ScratchRoot:
    root = ScratchRoot(tmp_path_factory.mktemp("installed") / "root")
    root.dpkg("--force-depends", "--install", str(deb))  # python3 and systemd are the host's, not in the scratch root
    return root


def test_install_unit_is_a_root_oneshot_that_ends_before_the_daemon_gives_up() -> None:
    require("systemd-analyze", "systemd")
    unit = unit_settings(INSTALL_UNIT.read_text())
    # oneshot: `systemctl start` waits for the install and fails with it; %f is the instance unescaped, the image's path.
    assert unit["Type"] == ["oneshot"]
    assert unit["ExecStart"] == [f"/{LIBEXEC}/install-firmware %f"]
    assert not {"User", "DynamicUser", "WantedBy", "RequiredBy"} & unit.keys()  # root, started on request only
    # The daemon kills its request past install_timeout_s and rolls back; the unit must have ended by then.
    timespan = run(["systemd-analyze", "timespan", unit["TimeoutStartSec"][0]])
    found = re.search(r"μs: (\d+)", timespan.stdout)
    assert found is not None, timespan.stdout + timespan.stderr
    assert int(found[1]) / 1e6 < FirmwareSettings().install_timeout_s


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


def test_polkit_rule_allows_the_service_to_reboot_and_to_start_installs_and_nothing_more(tmp_path: Path) -> None:
    # Asked of the real polkitd (its own JavaScript engine, duktape, and the host's action definitions), which
    # reads the rule from where the package puts it: in private namespaces, so the host's polkit is left alone.
    # A process of the service user asks, with the details systemd gives manage-units (unit and verb, since v226).
    # Not handled by the rule, an action falls back to its default for a process outside any login session:
    # an administrator's password, which an unattended daemon never has.
    install = install_unit(f"/{FIRMWARE}/incoming/{NAME}_1.2.0_arm64.deb")  # as request-firmware-install names it
    rollback = install_unit(f"/{FIRMWARE}/installed/{NAME}_1.1.0_arm64.deb")
    manage = "org.freedesktop.systemd1.manage-units"
    asked = {
        "reboot": (("org.freedesktop.login1.reboot", NAME, {}), "yes"),
        "reboot, other sessions": (("org.freedesktop.login1.reboot-multiple-sessions", NAME, {}), "yes"),
        "start the install": ((manage, NAME, {"unit": install, "verb": "start"}), "yes"),
        "start the rollback": ((manage, NAME, {"unit": rollback, "verb": "start"}), "yes"),
        "reboot past inhibitors": (("org.freedesktop.login1.reboot-ignore-inhibit", NAME, {}), ADMIN),
        "power off": (("org.freedesktop.login1.power-off", NAME, {}), ADMIN),
        "units, no details": ((manage, NAME, {}), ADMIN),
        "stop the install": ((manage, NAME, {"unit": install, "verb": "stop"}), ADMIN),
        "restart the install": ((manage, NAME, {"unit": install, "verb": "restart"}), ADMIN),
        "start the daemon": ((manage, NAME, {"unit": f"{NAME}.service", "verb": "start"}), ADMIN),
        "start another unit": ((manage, NAME, {"unit": "ssh.service", "verb": "start"}), ADMIN),
        "start the bare template": ((manage, NAME, {"unit": "charger-gateway-install@.service", "verb": "start"}), ADMIN),
        "start a look-alike": ((manage, NAME, {"unit": f"x{install}", "verb": "start"}), ADMIN),
        "start an install as another unit type": ((manage, NAME, {"unit": install.replace(".service", ".timer"), "verb": "start"}), ADMIN),
        "other user reboots": (("org.freedesktop.login1.reboot", "www-data", {}), ADMIN),
        "other user starts the install": ((manage, "www-data", {"unit": install, "verb": "start"}), ADMIN),
    }
    answers = ask_polkitd(DEPLOY / "polkit.rules", [question for question, _ in asked.values()], tmp_path)
    assert dict(zip(asked, answers, strict=True)) == {case: answer for case, (_, answer) in asked.items()}


def test_package_is_small_and_declares_its_conffile(deb: Path) -> None:
    assert deb.stat().st_size < 5e6  # about 2 MB: the venv's wheels; a stray cache or venv would be tens
    listing = run(["dpkg-deb", "--contents", str(deb)]).stdout
    paths = [line.split()[5] for line in listing.splitlines()]
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in paths if "/site-packages/pip/" in p or "/site-packages/setuptools/" in p]
    assert not [p for p in paths if "/site-packages/tests/" in p]
    assert "./opt/charger-gateway/venv/lib/python3.11/site-packages/gateway/profiles/heidelberg-energy-control.yaml" in paths
    modes = {line.split()[5]: line.split()[:2] for line in listing.splitlines()}
    assert modes[f"./lib/systemd/system/{INSTALL_UNIT.name}"] == ["-rw-r--r--", "root/root"]
    for script in ("install-firmware", "request-firmware-install"):  # root's, run by the install unit and the daemon
        assert modes[f"./{LIBEXEC}/{script}"] == ["-rwxr-xr-x", "root/root"]

    conffiles = run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout.split()
    assert conffiles == [f"/etc/{NAME}/gateway.yaml"]
    control = run(["dpkg-deb", "--field", str(deb), "Depends", "Recommends"]).stdout
    assert "python3 (>= 3.11), python3 (<< 3.12)" in control  # the venv's minor version, no other
    assert "Recommends: python3-systemd, polkitd" in control  # polkitd runs polkit.rules: Reset Hard, firmware updates


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
    assert (installed / f"lib/systemd/system/{INSTALL_UNIT.name}").read_bytes() == INSTALL_UNIT.read_bytes()
    for script in ("install-firmware", "request-firmware-install"):
        assert (installed / LIBEXEC / script).read_bytes() == (DEPLOY / script).read_bytes()
    assert (installed / ETC / "gateway.yaml").read_bytes() == (DEPLOY / "gateway.yaml").read_bytes()
    conffiles = run(["dpkg-query", f"--admindir={installed / 'var/lib/dpkg'}", "-W", "-f=${Conffiles}", NAME]).stdout
    assert f"/etc/{NAME}/gateway.yaml" in conffiles


def test_packaged_config_installs_firmware_through_the_install_unit(installed: ScratchRoot) -> None:
    config = yaml.safe_load((installed / ETC / "gateway.yaml").read_text())
    command = config["firmware"]["install_command"]
    assert command == [REQUEST_INSTALL, "{file}"]
    assert os.access(installed / command[0].lstrip("/"), os.X_OK)


def test_packaged_config_reboots_on_reset_hard(installed: ScratchRoot) -> None:
    # What polkit.rules lets the service do (the polkit test asks polkitd); without it Reset Hard restarts the daemon alone.
    config = yaml.safe_load((installed / ETC / "gateway.yaml").read_text())
    assert config["ocpp"] == {"hard_reset_command": ["systemctl", "reboot"]}


def test_installed_venv_imports_every_module(installed: ScratchRoot) -> None:
    # A dependency imported somewhere but missing from setup.cfg's install_requires fails here, not on site. The
    # venv also sees the system's site-packages (for python3-systemd, imported only when present): left out here,
    # so that a Debian package of this build machine cannot stand in for a missing dependency.
    probe = (
        "import site, sys\n"
        "sys.path[:] = [p for p in sys.path if p not in site.getsitepackages() or p.startswith(sys.prefix)]\n"
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
    # Exactly what the installer fills in: the packaged settings (paths, firmware.install_command, Reset Hard) are
    # valid as they are, and the bus is unused only until the connectors are in.
    assert faults.keys() == {"charge_point.identity", "charge_point.vendor", "charge_point.model", "backend.url", "buses[0].name", "connectors"}
    lines = (installed / ETC / "gateway.yaml").read_text().splitlines()
    for key, fault in faults.items():  # each at the file, line and key the installer edits
        leaf = key.rsplit(".", 1)[-1].split("[")[0]
        assert fault["file"] == str(installed / ETC / "gateway.yaml")
        assert f"{leaf}:" in lines[int(fault["line"]) - 1], (key, fault["line"])


def test_installed_units_pass_systemd_analyze_verify(installed: ScratchRoot) -> None:
    # verify wants each unit's command to exist in the root: the daemon's through the package's /usr/bin link into
    # the venv, the install unit's for a real image path (%f as systemd reads it) at the installed script.
    require("systemd-analyze", "systemd")
    with_host_parts(installed.path)
    install = install_unit(f"/{FIRMWARE}/incoming/{NAME}_1.2.0_arm64.deb")
    assert install == r"charger-gateway-install@var-lib-charger\x2dgateway-firmware-incoming-charger\x2dgateway_1.2.0_arm64.deb.service"
    for unit, command in ((f"{NAME}.service", installed / VENV / f"bin/{NAME}"), (install, installed / LIBEXEC / "install-firmware")):
        result = verify(installed.path, unit)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), unit

        aside = command.with_name(f"{command.name}.aside")  # the check has teeth: without its command, verify fails
        command.rename(aside)
        try:
            assert verify(installed.path, unit).returncode != 0, unit
        finally:
            aside.rename(command)


def test_install_enables_the_unit(installed: ScratchRoot) -> None:
    # postinst enables it through deb-systemd-helper; without it, only with a running systemd (never into a scratch root).
    require("deb-systemd-helper", "init-system-helpers")
    link = installed / f"etc/systemd/system/multi-user.target.wants/{NAME}.service"
    assert os.readlink(link) == f"/lib/systemd/system/{NAME}.service"


def test_install_script_refuses_an_image_outside_the_firmware_directory(tmp_path: Path) -> None:
    # Even a package of the gateway: the daemon stages its images nowhere else, so anything else is not one of them.
    root = tmp_path / "root"
    firmware = root / FIRMWARE
    (firmware / "incoming").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = tiny_deb(elsewhere, NAME)
    (firmware / "incoming/link.deb").symlink_to(image)
    dotted = firmware / "incoming" / os.path.relpath(image, firmware / "incoming")  # .../firmware/incoming/../../..
    for named in (image, firmware / "incoming/link.deb", dotted):
        result = install_firmware(DEPLOY / "install-firmware", named, root)
        assert (result.returncode, result.stdout) == (1, ""), named
        assert f"is not under {firmware.resolve()}: refused" in result.stderr

    # The firmware directory is the service user's to replace; a symlink there does not move the boundary.
    shutil.rmtree(firmware)
    firmware.symlink_to(elsewhere)
    result = install_firmware(DEPLOY / "install-firmware", firmware / image.name, root)
    assert (result.returncode, result.stdout) == (1, "") and "refused" in result.stderr


def test_install_script_refuses_another_package_or_no_package(tmp_path: Path) -> None:
    root = tmp_path / "root"
    incoming = root / FIRMWARE / "incoming"
    incoming.mkdir(parents=True)
    other = tiny_deb(incoming, "other")
    (incoming / "truncated.deb").write_bytes(other.read_bytes()[:100])
    (incoming / "a-directory.deb").mkdir()
    refusals = {
        other: f"is a package of 'other', not of {NAME}: refused",
        incoming / "truncated.deb": "is not a Debian package",
        incoming / "a-directory.deb": "is not a regular file: refused",
        incoming / "gone.deb": "no such file",
    }
    for image, reason in refusals.items():
        result = install_firmware(DEPLOY / "install-firmware", image, root)
        assert (result.returncode, result.stdout) == (1, ""), image
        assert result.stderr.startswith(f"install-firmware: {image}") and reason in result.stderr, result.stderr
    assert run([str(DEPLOY / "install-firmware")]).returncode == 2  # usage


def test_install_request_refuses_a_path_that_names_no_unit(tmp_path: Path) -> None:
    # Refused before systemctl: the path must come back whole from the instance name (%f) as install-firmware's argument.
    script = str(DEPLOY / "request-firmware-install")
    long_name = "a-" * 60 + ".deb"  # 124 characters (the daemon allows 128), over 255 once escaped with the directory
    for path, reason in (
        (f"{FIRMWARE}/incoming/x.deb", "is not an absolute path"),
        (f"/{FIRMWARE}/incoming/../installed/x.deb", "makes no unit name"),
        (f"/{FIRMWARE}/incoming/{long_name}", "makes no unit name"),
    ):
        result = run([script, path], cwd=tmp_path)
        assert (result.returncode, result.stdout) == (2, ""), path
        assert reason in result.stderr
    assert run([script], cwd=tmp_path).returncode == 2


def test_firmware_update_rollback_remove_and_purge(deb: Path, newer_deb: Path, tmp_path: Path) -> None:
    root = ScratchRoot(tmp_path / "root")
    root.dpkg("--force-depends", "--install", str(deb))

    # The installer's work, and the daemon's state.
    (root / ETC / "gateway.yaml").write_text(SITE_CONFIG)
    (root / ETC / "backend-password").write_text(SITE_PASSWORD)
    (root / f"var/lib/{NAME}").mkdir(parents=True)
    (root / f"var/lib/{NAME}/gateway.db").write_bytes(b"SQLite format 3\0")
    result = root.check_config()
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr

    # A firmware update: the next version, as the daemon downloaded it, installed by the script the install unit
    # runs as root. Unattended: the site's config and password stay (the package's new config lands beside
    # them), and the running daemon is left to report Installed and restart itself.
    factory = root.version()
    incoming = root / FIRMWARE / "incoming"
    incoming.mkdir(parents=True)
    result = root.install_firmware(Path(shutil.copy(newer_deb, incoming)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert root.version() == f"{factory}+fw1"
    assert f"installing {NAME} {factory}+fw1 (installed: {factory})" in result.stdout
    assert f"{NAME}: not restarted here: the gateway restarts itself" in result.stdout  # the variable reached postinst
    assert (root / ETC / "gateway.yaml").read_text() == SITE_CONFIG
    assert (root / ETC / "gateway.yaml.dpkg-dist").read_text().endswith("# a line the next version adds\n")
    assert (root / ETC / "backend-password").read_text() == SITE_PASSWORD
    gid = int(root.ids("group", NAME)[2])
    assert root.owner_and_mode(ETC) == (0, gid, 0o750)
    assert root.owner_and_mode(ETC / "backend-password")[1:] == (gid, 0o600)

    # Its rollback: the image the last good update kept goes back on, a downgrade, as unattended.
    kept = root / FIRMWARE / "installed"
    kept.mkdir()
    result = root.install_firmware(Path(shutil.copy(deb, kept)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert root.version() == factory
    assert (root / ETC / "gateway.yaml").read_text() == SITE_CONFIG
    assert (root / ETC / "backend-password").read_text() == SITE_PASSWORD

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
