"""Boot benchmark: how fast an instance is ready, and what saved builds save.

Prints figures; asserts nothing (these machines are noisy). In one run, same machine,
same VM size, median of --runs:

  A  naive: the stock image and stock cloud-init (four cloud-init units, full initrd,
     data source probing, every host key type generated), SSH polled every 2 s
  B  `ccloudvm create debian` with everything ccloudvm does to boot fast: a warm boot
     from the image's snapshot (the first create of a size makes the snapshot; that
     one is printed on its own, and so is a cold create, CCLOUDVM_WARM_BOOT=0)
  C  `ccloudvm create` of a workload that was built before (saved image reused)
  D  the floor: the same kernel and initrd booted to its first userspace step
Also: B + provisioning (create --no-cache of the same workload), the first and a
cached `ccloudvm image build`, the acceleration used and the host.

A deviates from "BIOS boot": the images ccloudvm builds carry no boot loader, so A also
boots the kernel directly; it differs from B in everything else above.

Usage: python bench/boot.py [--runs 3] [--home /var/tmp/ccloudvm-bench] [--skip-first-build]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ccloudvm.core.hostinfo import host_user  # noqa: E402
from ccloudvm.guest import keys, seed  # noqa: E402
from ccloudvm.images import catalog as images  # noqa: E402
from ccloudvm.state.paths import StateDir, resource_dir  # noqa: E402
from ccloudvm.vm import accel  # noqa: E402

MEM = "1024"
CPUS = "2"
BENCH_WORKLOAD = str(ROOT / "bench" / "workloads" / "bench-provision.yaml")


def ccloudvm(home: Path, *args: str, env: dict[str, str] | None = None) -> float:
    """Run the real CLI; return its wall time in seconds."""
    start = time.monotonic()
    subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env={**os.environ, "CCLOUDVM_HOME": str(home), **(env or {})},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        check=True, cwd=ROOT,
    )  # fmt: skip
    return time.monotonic() - start


def median_of(runs: int, one: Callable[[int], float]) -> tuple[float, list[float]]:
    values = [one(i) for i in range(runs)]
    return statistics.median(values), values


def stock_definition(home: Path) -> None:
    """images/debian-12-stock.yaml: the bundled recipe without ccloudvm's boot tuning."""
    bundled = yaml.safe_load((resource_dir("images") / "debian-12.yaml").read_text())
    build = dict(bundled["build"])
    build["packages"] = [p for p in build["packages"] if p != "dbus"] + ["systemd-resolved"]
    build["initrd_modules"] = []  # initramfs-tools' default: most modules
    build["services"] = ["systemd-networkd.service"]
    build["masked"] = []
    build["files"] = {}
    definition = {
        "description": "Debian 12 as a stock cloud image would boot (benchmark only)",
        "build": build,
        "boot": {"cmdline": "root=/dev/vda rw console=ttyS0"},
    }
    (home / "images").mkdir(parents=True, exist_ok=True)
    (home / "images" / "debian-12-stock.yaml").write_text(yaml.safe_dump(definition))


def floor_boot(image: images.BaseImage) -> float:
    """D: seconds from QEMU's start to the kernel running the initrd's /init."""
    assert image.kernel and image.initrd
    argv = [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", MEM, "-smp", CPUS,
        "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", "console=ttyS0 panic=-1",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )  # noqa: S603
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if b"Run /init as init process" in line:
                return time.monotonic() - start
        raise RuntimeError("the kernel never reached userspace")
    finally:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def naive_boot(state: StateDir, image: images.BaseImage, index: int) -> float:
    """A: stock image and cloud-init settings, ready = SSH login works and boot-finished exists,
    polled every 2 s. The host key is read from the console, where cloud-init prints it."""
    user = host_user()
    user_key = keys.ensure_user_key(state)
    with tempfile.TemporaryDirectory(prefix="naive-", dir=state.root) as tmp:
        work = Path(tmp)
        host_key = keys.generate_ed25519("unused")
        cfg = seed.SeedConfig(
            hostname=f"naive{index}", user_name=user.guest_name, uid=user.guest_uid,
            gid=user.guest_gid, home=user.guest_home, authorized_keys=[user_key.public_openssh],
            host_key=host_key, mounts=[], chown_mounts=False, extra_user_data={},
        )  # fmt: skip
        files = seed.render_seed_files(cfg, f"naive-{index}-{time.time_ns()}")
        user_data = yaml.safe_load(files["user-data"])
        for stock in ("ssh_keys", "ssh_deletekeys"):
            user_data.pop(stock, None)  # stock: cloud-init generates every key type itself
        iso_dir = work / "seed"
        iso_dir.mkdir()
        _write_iso(
            work / "seed.iso",
            {
                "user-data": "#cloud-config\n" + yaml.safe_dump(user_data),
                "meta-data": files["meta-data"],
            },
        )
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(image.disk),
                str(work / "disk.qcow2"),
            ],
            check=True,
        )  # noqa: S603,S607
        port = _free_port()
        serial = work / "serial.log"
        argv = [
            "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", MEM, "-smp", CPUS,
            "-nodefaults", "-display", "none", "-serial", f"file:{serial}", "-machine", "q35",
            "-drive", f"file={work / 'disk.qcow2'},if=virtio,format=qcow2",
            "-drive", f"file={work / 'seed.iso'},if=virtio,media=cdrom,readonly=on,format=raw",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", image.cmdline or "",
        ]  # fmt: skip
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )  # noqa: S603
        try:
            while True:
                time.sleep(2)
                if proc.poll() is not None:
                    raise RuntimeError("QEMU exited during the naive boot")
                if _naive_ready(serial, port, state.private_key, user.guest_name):
                    return time.monotonic() - start
                if time.monotonic() - start > 900:
                    raise RuntimeError("the naive boot was not ready in 900 s")
        finally:
            proc.kill()
            proc.wait()


def _write_iso(path: Path, files: dict[str, str]) -> None:
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, text in files.items():
        data = text.encode()
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            "/" + name.upper().replace("-", "") + ".;1",
            rr_name=name,
            joliet_path="/" + name,
        )
    iso.write(str(path))
    iso.close()


def _naive_ready(serial: Path, port: int, key: Path, user: str) -> bool:
    text = serial.read_text(errors="replace") if serial.exists() else ""
    match = re.search(r"(ssh-ed25519 \S+) root@", text)
    if not match:
        return False
    client = paramiko.SSHClient()
    kind, blob = match.group(1).split()
    client.get_host_keys().add(
        f"[127.0.0.1]:{port}", kind, paramiko.Ed25519Key(data=__import__("base64").b64decode(blob))
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect("127.0.0.1", port=port, username=user, key_filename=str(key), timeout=3,
                       banner_timeout=3, auth_timeout=3, look_for_keys=False, allow_agent=False)  # fmt: skip
        _, out, _ = client.exec_command("test -f /var/lib/cloud/instance/boot-finished && echo yes")
        return out.read().strip() == b"yes"
    except (OSError, paramiko.SSHException):
        return False
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/var/tmp/ccloudvm-bench"))
    parser.add_argument(
        "--skip-first-build", action="store_true", help="do not time a build from scratch"
    )
    args = parser.parse_args()
    home: Path = args.home
    home.mkdir(parents=True, exist_ok=True)
    state = StateDir(home)
    state.ensure()
    os.environ["CCLOUDVM_HOME"] = str(home)
    for name in list((home / "instances").glob("*")):  # left over from an interrupted run
        shutil.rmtree(name, ignore_errors=True)
    # Snapshots from earlier runs would make the first create look like a later one.
    shutil.rmtree(home / "cache" / "warm", ignore_errors=True)

    acc = accel.detect(mode=accel.requested_mode(None), run_dir=state.run)
    print(f"host: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"acceleration: {acc.accel} ({acc.reason}); VM: {CPUS} vCPUs, {MEM} MiB; median of {args.runs}")  # fmt: skip

    definition = images.load_definition(state, "debian-12")
    cached_dir = images.images_dir(state) / f"debian-12-{definition.key}"
    if not args.skip_first_build and cached_dir.exists():
        shutil.rmtree(cached_dir)
    first_build = ccloudvm(home, "image", "build", "debian-12")
    cached_build = ccloudvm(home, "image", "build", "debian-12")
    print(f"image build: first {first_build:.1f} s, cached {cached_build:.2f} s")
    image = images.ensure_image(state, "debian-12")
    stock_definition(home)
    stock = images.ensure_image(state, "debian-12-stock")

    d, d_runs = median_of(args.runs, lambda i: floor_boot(image))
    a, a_runs = median_of(args.runs, lambda i: naive_boot(state, stock, i))

    def plain_create(i: int, prefix: str = "bench-b", env: dict[str, str] | None = None) -> float:
        name = f"{prefix}{i}"
        seconds = ccloudvm(
            home, "create", "debian", "--name", name, "--mem", MEM, "--cpus", CPUS, env=env
        )
        ccloudvm(home, "delete", name)
        return seconds

    b_first = plain_create(0, "bench-first")  # makes the warm-boot snapshot of this size
    b, b_runs = median_of(args.runs, plain_create)
    cold = {"CCLOUDVM_WARM_BOOT": "0"}
    b_cold, b_cold_runs = median_of(args.runs, lambda i: plain_create(i, "bench-cold", cold))
    provisioned = ccloudvm(
        home,
        "create",
        BENCH_WORKLOAD,
        "--no-cache",
        "--name",
        "bench-p",
        "--mem",
        MEM,
        "--cpus",
        CPUS,
    )
    ccloudvm(home, "delete", "bench-p")
    build = ccloudvm(home, "build", BENCH_WORKLOAD, "--no-cache")

    def reused_create(i: int) -> float:
        seconds = ccloudvm(
            home, "create", BENCH_WORKLOAD, "--name", f"bench-c{i}", "--mem", MEM, "--cpus", CPUS
        )
        ccloudvm(home, "delete", f"bench-c{i}")
        return seconds

    c, c_runs = median_of(args.runs, reused_create)

    def fmt(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    print(f"A naive boot to ready        {a:6.1f} s   ({fmt(a_runs)})")
    print(f"B ccloudvm create            {b:6.1f} s   ({fmt(b_runs)})")
    print(f"  first create of this size  {b_first:6.1f} s   (boots once, saves the snapshot)")
    print(
        f"  cold create                {b_cold:6.1f} s   ({fmt(b_cold_runs)}; CCLOUDVM_WARM_BOOT=0)"
    )
    print(
        f"  B + provisioning           {provisioned:6.1f} s   (create --no-cache of bench-provision)"
    )
    print(f"  ccloudvm build             {build:6.1f} s")
    print(f"C create from a saved build  {c:6.1f} s   ({fmt(c_runs)})")
    print(f"D kernel to first userspace  {d:6.1f} s   ({fmt(d_runs)})")
    print(
        f"A/B = {a / b:.2f}   (B + provisioning)/C = {provisioned / c:.2f}   C/B = {c / b:.2f}   "
        f"cold/warm = {b_cold / b:.2f}"
    )


if __name__ == "__main__":
    main()
