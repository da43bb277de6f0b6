"""One file of a workload chain, rendered: its templates in its own environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ccloudvm.core.config import Path_
from ccloudvm.core.errors import UsageError
from ccloudvm.core.specs import MountSpec, PortSpec
from ccloudvm.workloads import model
from ccloudvm.workloads.parse import ParsedFile
from ccloudvm.workloads.sources import _bundled_dir
from ccloudvm.workloads.spec import Check, DriveSpec, ProvisionStep, VMSpec
from ccloudvm.workloads.templating import Downloads, TemplateContext, make_environment, render
from ccloudvm.workloads.templating import variables as template_variables


class _Level:
    """One file of the chain, rendered."""

    def __init__(
        self,
        doc: ParsedFile,
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
        path: Path_,
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

    def text(self, path: Path_, value: str) -> str:
        return self.render(path, inline=value)

    def vm(self) -> VMSpec:
        vm = self.doc.model.vm or model.VM()
        for key in ("mounts", "drives"):
            if self.untrusted_from is not None and getattr(vm, key):
                # A script from the internet must not get host folders or disks handed to it.
                raise UsageError(
                    f"{self.doc.where(('vm', key))}: {self._untrusted_text()} cannot share host {key}",
                    hint="download it and run it as a local file, or add --mount yourself",
                )
        return VMSpec(
            mem_mib=vm.mem,
            cpus=vm.cpus,
            disk_gib=vm.disk,
            ports=tuple(self._port(index, port) for index, port in enumerate(vm.ports or [])),
            mounts=tuple(self._mount(index, mount) for index, mount in enumerate(vm.mounts or [])),
            drives=tuple(
                DriveSpec(
                    path=Path(self.text(("vm", "drives", index, "path"), drive.path)).expanduser(),
                    format=drive.format or "qcow2",
                    options=drive.options or "",
                )
                for index, drive in enumerate(vm.drives or [])
            ),
        )

    def _port(self, index: int, port: int | str) -> PortSpec:
        where: Path_ = ("vm", "ports", index)
        try:
            return PortSpec.parse(self.text(where, str(port)))
        except UsageError as exc:
            raise UsageError(
                f"{self.doc.where(where)}: {exc.message}",
                hint="write HOST:GUEST like '8080:80', or one port for both sides",
            ) from exc

    def _mount(self, index: int, mount: model.Mount) -> MountSpec:
        path: Path_ = ("vm", "mounts", index)
        guest = self.text((*path, "guest"), mount.guest)
        if not guest.startswith("/"):
            raise UsageError(f"{self.doc.where((*path, 'guest'))} must be an absolute path")
        return MountSpec(
            host_path=Path(self.text((*path, "host"), mount.host)).expanduser(),
            guest_path=guest,
            # Untagged mounts get their tag after the chain is merged (merge.tag_mounts).
            tag=self.text((*path, "tag"), mount.tag) if mount.tag else "",
            security_model=mount.security_model,
            readonly=bool(mount.readonly),
        )

    def user_data(self) -> dict[str, Any]:
        value = self.doc.model.user_data
        if value is None:
            return {}
        if isinstance(value, dict):
            return _render_tree(self, ("user_data",), value)  # type: ignore[no-any-return]
        text = self.text(("user_data",), value)
        return _parse_cloud_config(text, f"{self.doc.where(('user_data',))} (rendered)")

    def _resolve_file(self, path: Path_, ref: str) -> Path:
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
        skipped = "vm" if self.ctx.bare_metal else "host"
        return [
            self._step(index, step)
            for index, step in enumerate(self.doc.model.provision or [])
            if step.only != skipped
        ]

    def _step(self, index: int, step: model.Step) -> ProvisionStep:
        path: Path_ = ("provision", index)
        env = tuple(
            (key, self.text((*path, "env", key), str(value)))
            for key, value in (step.env or {}).items()
        )
        sudo = bool(step.sudo)
        if step.copy_ is not None:
            return ProvisionStep(
                name=step.name,
                copy_src=self._resolve_file((*path, "copy", "src"), step.copy_.src),
                copy_dest=self.text((*path, "copy", "dest"), step.copy_.dest),
                sudo=sudo,
                copy_mode=0o644 if step.copy_.mode is None else step.copy_.mode,
                env=env,
            )
        downloads = Downloads(
            self.cache_dir, f"step {step.name!r}", restricted=self.untrusted_from is not None
        )
        if step.script is not None:
            script = self.render((*path, "script"), file=step.script, downloads=downloads)
        else:
            script = self.render((*path, "run"), inline=step.run, downloads=downloads)
        return ProvisionStep(
            name=step.name, script=script, sudo=sudo, uploads=tuple(downloads.items), env=env
        )

    def checks(self) -> list[Check]:
        checks = []
        for index, check in enumerate(self.doc.model.checks or []):
            path: Path_ = ("checks", index)
            if check.script is not None:
                run = self.render((*path, "script"), file=check.script)
            else:
                run = self.text((*path, "run"), check.run or "")
            checks.append(Check(name=check.name, run=run, sudo=bool(check.sudo)))
        return checks

    def cluster(self) -> dict[str, str]:
        scripts = {}
        cluster = self.doc.model.cluster or model.Cluster()
        for name in model.CLUSTER_SCRIPTS:
            value = getattr(cluster, name)
            if value is None:
                continue
            path: Path_ = ("cluster", name)
            if _looks_like_template_file(value):
                scripts[name] = self.render(path, file=value.strip())
            else:
                scripts[name] = self.text(path, value)
        return scripts

    def network(self) -> dict[str, Any]:
        """The cluster network parameters this file sets (the others keep their defaults)."""
        network = (self.doc.model.cluster or model.Cluster()).network
        return {} if network is None else network.model_dump(exclude_unset=True)

    def ca_certs(self) -> list[str]:
        certs = []
        for index, value in enumerate(self.doc.model.ca_certs or []):
            path: Path_ = ("ca_certs", index)
            if "-----BEGIN" in value:
                certs.append(_check_pem(value, self.doc.where(path)))
            else:
                certs.append(read_ca_cert(self._resolve_file(path, value)))
        return certs


def _looks_like_template_file(value: str) -> bool:
    """A cluster script is a file reference when it is one word ending in .j2 or .sh."""
    text = value.strip()
    return re.fullmatch(r"[\w./-]+\.(j2|sh)", text) is not None


def _render_tree(level: _Level, path: Path_, value: Any) -> Any:
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
