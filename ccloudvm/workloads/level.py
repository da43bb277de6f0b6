"""One file of a workload chain, rendered: its templates in its own environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ccloudvm.core.errors import UsageError
from ccloudvm.core.sizes import SizeError, accepted_forms, parse_size
from ccloudvm.core.specs import SECURITY_MODELS, MountSpec, PortSpec
from ccloudvm.workloads.parse import CLUSTER_SCRIPTS, _Doc
from ccloudvm.workloads.sources import _bundled_dir
from ccloudvm.workloads.spec import Check, DriveSpec, ProvisionStep, VMSpec
from ccloudvm.workloads.templating import Downloads, TemplateContext, make_environment, render
from ccloudvm.workloads.templating import variables as template_variables

DRIVE_FORMAT_RE = re.compile(r"[a-z0-9]+")


def _size(doc: _Doc, path: tuple[str | int, ...], value: int | str, unit: str) -> int:
    """An integer in `unit` (M or G), or a string like '4G', '512M' or '1.5G' (ccloudvm.core.sizes)."""
    try:
        number = parse_size(value, unit)
    except SizeError as exc:
        raise UsageError(
            f"{doc.where(path)} must be a number or a size like 4G, not {value!r}",
            hint=accepted_forms(unit),
        ) from exc
    if number <= 0:
        raise UsageError(f"{doc.where(path)} must be positive")
    return number


class _Level:
    """One file of the chain, rendered."""

    def __init__(
        self,
        doc: _Doc,
        ctx: TemplateContext,
        wvars: Mapping[str, Any],
        cache_dir: Path,
        untrusted_from: str | None = None,
    ) -> None:
        self.doc = doc
        # The URL of the workload that makes this level untrusted: its own, or that of a
        # child from a URL that inherits it. Host mounts, drives, files and CA certificate
        # files are refused for the whole chain then, whatever level names them (issue 8).
        self.untrusted_from = doc.src.origin if doc.src.remote else untrusted_from
        self.ctx = ctx
        self.wvars = wvars
        self.cache_dir = cache_dir
        src = doc.src
        search = [] if src.base_dir is None else [src.base_dir]
        self.env: jinja2.Environment = make_environment(src.remote, [*search, _bundled_dir()])

    def render(
        self,
        path: tuple[str | int, ...],
        *,
        inline: str | None = None,
        file: str | None = None,
        downloads: Downloads | None = None,
    ) -> str:
        label = f"workload {self.doc.src.name} ({self.doc.where(path)})"
        collector = downloads or Downloads(None, label, restricted=self.untrusted_from is not None)
        names = template_variables(self.ctx, self.wvars, collector)
        return render(
            self.env,
            source=inline,
            template_name=file,
            label=label,
            first_line=self.doc.line(path),
            names=names,
        )

    def text(self, path: tuple[str | int, ...], value: str) -> str:
        return self.render(path, inline=value)

    def vm(self) -> VMSpec:
        doc, vm = self.doc, self.doc.data.get("vm") or {}
        mem, disk = vm.get("mem"), vm.get("disk")
        for key in ("mounts", "drives"):
            if self.untrusted_from is not None and vm.get(key):
                # A script from the internet must not get host folders or disks handed to it.
                raise UsageError(
                    f"{doc.where(('vm', key))}: {self._untrusted_text()} cannot share host {key}",
                    hint="download it and run it as a local file, or add --mount yourself",
                )
        ports = []
        for index, port in enumerate(vm.get("ports") or []):
            where = ("vm", "ports", index)
            try:
                ports.append(PortSpec.parse(self.text(where, str(port))))
            except UsageError as exc:
                raise UsageError(
                    f"{doc.where(where)}: {exc.message}",
                    hint="write HOST:GUEST like '8080:80', or one port for both sides",
                ) from exc
        mounts = []
        for index, item in enumerate(vm.get("mounts") or []):
            path: tuple[str | int, ...] = ("vm", "mounts", index)
            guest = self.text((*path, "guest"), item["guest"])
            if not guest.startswith("/"):
                raise UsageError(f"{doc.where((*path, 'guest'))} must be an absolute path")
            model = item.get("security_model")
            if model is not None and model not in SECURITY_MODELS:
                raise UsageError(
                    f"{doc.where((*path, 'security_model'))}: unknown 9p security model {model!r}",
                    hint="use one of " + ", ".join(SECURITY_MODELS),
                )
            # Untagged mounts get their tag after the chain is merged (_tag_mounts).
            tag = self.text((*path, "tag"), item["tag"]) if item.get("tag") else ""
            mounts.append(
                MountSpec(
                    host_path=Path(self.text((*path, "host"), item["host"])).expanduser(),
                    guest_path=guest,
                    tag=tag,
                    security_model=model,
                    readonly=bool(item.get("readonly", False)),
                )
            )
        drives = []
        for index, item in enumerate(vm.get("drives") or []):
            path = ("vm", "drives", index)
            fmt = item.get("format") or "qcow2"
            if not DRIVE_FORMAT_RE.fullmatch(fmt):
                raise UsageError(
                    f"{doc.where((*path, 'format'))}: {fmt!r} is not a disk format",
                    hint="use a QEMU format name such as qcow2 or raw",
                )
            drives.append(
                DriveSpec(
                    path=Path(self.text((*path, "path"), item["path"])).expanduser(),
                    format=fmt,
                    options=item.get("options") or "",
                )
            )
        return VMSpec(
            mem_mib=_size(doc, ("vm", "mem"), mem, "M") if mem is not None else None,
            cpus=vm.get("cpus"),
            disk_gib=_size(doc, ("vm", "disk"), disk, "G") if disk is not None else None,
            ports=tuple(ports),
            mounts=tuple(mounts),
            drives=tuple(drives),
        )

    def user_data(self) -> dict[str, Any]:
        value = self.doc.data.get("user_data")
        if value is None:
            return {}
        if isinstance(value, dict):
            return _render_tree(self, ("user_data",), value)  # type: ignore[no-any-return]
        text = self.text(("user_data",), value)
        return _parse_cloud_config(text, f"{self.doc.where(('user_data',))} (rendered)")

    def _resolve_file(self, path: tuple[str | int, ...], ref: str) -> Path:
        src = self.doc.src
        if src.base_dir is None or self.untrusted_from is not None:
            raise UsageError(
                f"{self.doc.where(path)}: {self._untrusted_text()} cannot read files from this host",
                hint="download it and run it as a local file if you trust it",
            )
        for folder in (src.base_dir, _bundled_dir()):
            candidate = (folder / Path(ref).expanduser()).resolve()
            if candidate.is_file():
                return candidate
        raise UsageError(f"{self.doc.where(path)}: file {ref!r} not found")

    def _untrusted_text(self) -> str:
        if self.doc.src.remote or self.untrusted_from is None:
            return "a workload from a URL"
        return f"a workload inherited by {self.untrusted_from} (from a URL)"

    def steps(self) -> list[ProvisionStep]:
        steps = []
        for index, raw in enumerate(self.doc.data.get("provision") or []):
            path: tuple[str | int, ...] = ("provision", index)
            only = raw.get("only")
            if only == ("vm" if self.ctx.bare_metal else "host"):
                continue
            name = str(raw["name"])
            env = tuple(
                (str(key), self.text((*path, "env", str(key)), str(value)))
                for key, value in (raw.get("env") or {}).items()
            )
            for key, _ in env:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise UsageError(f"{self.doc.where((*path, 'env'))}: bad variable name {key!r}")
            sudo = bool(raw.get("sudo", False))
            if raw.get("copy") is not None:
                copy = raw["copy"]
                mode = str(copy.get("mode", "0644"))
                if not re.fullmatch(r"0?[0-7]{3}", mode):
                    raise UsageError(f"{self.doc.where((*path, 'copy', 'mode'))} must be octal")
                steps.append(
                    ProvisionStep(
                        name=name,
                        copy_src=self._resolve_file((*path, "copy", "src"), copy["src"]),
                        copy_dest=self.text((*path, "copy", "dest"), copy["dest"]),
                        sudo=sudo,
                        copy_mode=int(mode, 8),
                        env=env,
                    )
                )
                continue
            downloads = Downloads(
                self.cache_dir, f"step {name!r}", restricted=self.untrusted_from is not None
            )
            if raw.get("script") is not None:
                script = self.render((*path, "script"), file=raw["script"], downloads=downloads)
            else:
                script = self.render((*path, "run"), inline=raw["run"], downloads=downloads)
            steps.append(
                ProvisionStep(
                    name=name, script=script, sudo=sudo, uploads=tuple(downloads.items), env=env
                )
            )
        return steps

    def checks(self) -> list[Check]:
        checks = []
        for index, raw in enumerate(self.doc.data.get("checks") or []):
            path: tuple[str | int, ...] = ("checks", index)
            if raw.get("script") is not None:
                run = self.render((*path, "script"), file=raw["script"])
            else:
                run = self.text((*path, "run"), raw["run"])
            checks.append(Check(name=str(raw["name"]), run=run, sudo=bool(raw.get("sudo", False))))
        return checks

    def cluster(self) -> dict[str, str]:
        scripts = {}
        for name in CLUSTER_SCRIPTS:
            value = (self.doc.data.get("cluster") or {}).get(name)
            if value is None:
                continue
            path: tuple[str | int, ...] = ("cluster", name)
            if _looks_like_template_file(value):
                scripts[name] = self.render(path, file=value.strip())
            else:
                scripts[name] = self.text(path, value)
        return scripts

    def ca_certs(self) -> list[str]:
        certs = []
        for index, value in enumerate(self.doc.data.get("ca_certs") or []):
            path: tuple[str | int, ...] = ("ca_certs", index)
            if "-----BEGIN" in value:
                certs.append(_check_pem(value, self.doc.where(path)))
            else:
                certs.append(read_ca_cert(self._resolve_file(path, value)))
        return certs


def _looks_like_template_file(value: str) -> bool:
    """A cluster script is a file reference when it is one word ending in .j2 or .sh."""
    text = value.strip()
    return re.fullmatch(r"[\w./-]+\.(j2|sh)", text) is not None


def _render_tree(level: _Level, path: tuple[str | int, ...], value: Any) -> Any:
    """Render every string in a user_data given as a YAML mapping instead of a template."""
    if isinstance(value, dict):
        return {k: _render_tree(level, (*path, str(k)), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_tree(level, (*path, i), v) for i, v in enumerate(value)]
    if isinstance(value, str):
        return level.text(path, value)
    return value


def _parse_cloud_config(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{where}{line}: malformed cloud-config YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: malformed cloud-config YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{where}: cloud-config must be a YAML mapping")
    return data


def _check_pem(text: str, where: str) -> str:
    if "-----BEGIN CERTIFICATE-----" not in text or "-----END CERTIFICATE-----" not in text:
        raise UsageError(f"{where}: not a PEM certificate (-----BEGIN CERTIFICATE----- ...)")
    return text.strip() + "\n"


def read_ca_cert(path: Path) -> str:
    """The PEM text of a CA certificate file given with --ca-cert or in a workload."""
    try:
        text = path.expanduser().read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read CA certificate {path}: {exc}") from exc
    return _check_pem(text, str(path))
