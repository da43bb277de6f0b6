"""Resumable, checksum-verified downloads over HTTP(S).

A file is fetched into `<dest>.part`; an interrupted download resumes from there with a
Range request. The digest is checked before the file is renamed to `dest`, so `dest`
exists only when it is complete and correct. Proxies come from the usual environment
variables (requests' trust_env).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import requests

from ccloudvm.core import ui
from ccloudvm.core.diskspace import (
    NoSpaceError,
    check_free_space,
    is_disk_full,
    no_space_error,
    reporting_full_disk,
)
from ccloudvm.core.errors import CcloudvmError

CHUNK_SIZE = 1 << 20
# Network reads are smaller: a chunk cut off by a broken connection is lost, not kept.
NET_CHUNK_SIZE = 64 << 10
# (connect, read) in seconds: fail fast on a dead host, tolerate slow mirrors.
TIMEOUT = (15.0, 60.0)

_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(.+?)\s*$")
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def parse_sha256sums(text: str) -> dict[str, str]:
    """Map file name -> lower-case hex digest from "HEX  NAME" / "HEX *NAME" lines."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        match = _SUMS_LINE.match(line.strip())
        if match:
            sums[match.group(2).removeprefix("./")] = match.group(1).lower()
    return sums


def fetch_sha256sums(url: str, session: requests.Session | None = None) -> dict[str, str]:
    """Download and parse a SHA256SUMS file."""
    http = session or requests.Session()
    try:
        response = http.get(url, timeout=TIMEOUT)
    except _NETWORK_ERRORS as exc:
        raise CcloudvmError(
            f"cannot fetch checksums {url}: {_reason(exc)}",
            hint="check the network or the proxy variables (https_proxy, no_proxy)",
        ) from exc
    _raise_for_status(response, url)
    sums = parse_sha256sums(response.text)
    if not sums:
        raise CcloudvmError(f"{url} holds no 'SHA256  NAME' lines", hint="check the URL")
    return sums


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    sha256: str,
    session: requests.Session | None = None,
    *,
    description: str | None = None,
) -> Path:
    """Fetch `url` to `dest`, resuming `<dest>.part`, verified against `sha256`."""
    expected = sha256.lower()
    if dest.is_file():
        if sha256_file(dest) == expected:
            return dest
        dest.unlink()  # a stale or damaged earlier copy: never trust it
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    http = session or requests.Session()
    label = description or url.rsplit("/", 1)[-1]
    try:
        digest = _fetch(http, url, part, label)
    except _NETWORK_ERRORS as exc:
        raise CcloudvmError(
            f"download of {url} failed: {_reason(exc)}",
            hint=f"the partial download is kept in {part} and resumes on the next run",
        ) from exc
    except NoSpaceError:
        part.unlink(missing_ok=True)  # a partial file on a full disk helps no one
        raise
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        part.unlink(missing_ok=True)
        raise no_space_error(dest.parent) from exc
    if digest != expected:
        part.unlink(missing_ok=True)
        raise CcloudvmError(
            f"checksum mismatch for {url}: expected sha256 {expected}, got {digest}",
            hint="the file was deleted; if the source changed, update the image definition",
        )
    os.replace(part, dest)
    return dest


def _fetch(http: requests.Session, url: str, part: Path, label: str) -> str:
    """Download into `part` (resuming if it exists) and return the sha256 of the whole file."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with http.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
        if offset and response.status_code == 416:
            # Range past the end: the part file may already be the complete file.
            return sha256_file(part)
        _raise_for_status(response, url)
        if offset and response.status_code != 206:
            offset = 0  # the server ignored the Range header: start over
        elif offset and _range_start(response) != offset:
            response.close()
            part.unlink()  # an answer for a range we did not ask for: start clean
            return _fetch(http, url, part, label)
        digest = hashlib.sha256()
        if offset:
            with part.open("rb") as existing:
                while chunk := existing.read(CHUNK_SIZE):
                    digest.update(chunk)
        length = response.headers.get("Content-Length")
        needed = int(length) if length and length.isdigit() else None
        total = offset + needed if needed is not None else None
        if needed is not None:
            # Known size: refuse up front rather than fill the disk (issue 8).
            check_free_space(part.parent, needed)
        with (
            reporting_full_disk(part.parent, needed),
            ui.download_progress() as progress,
            part.open("ab" if offset else "wb") as handle,
        ):
            task = progress.add_task(label, total=total, completed=offset)
            for chunk in response.iter_content(NET_CHUNK_SIZE):
                handle.write(chunk)
                digest.update(chunk)
                progress.advance(task, len(chunk))
    return digest.hexdigest()


def _range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _raise_for_status(response: requests.Response, url: str) -> None:
    if response.status_code >= 400:
        raise CcloudvmError(
            f"cannot download {url}: HTTP {response.status_code} {response.reason}",
            hint="check the URL in the image definition",
        )


def _reason(exc: Exception) -> str:
    """One line out of requests' nested exception text."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
