"""One workload file, parsed and checked against the model, with the line of every value."""

from __future__ import annotations

from dataclasses import dataclass

from ccloudvm.core.config import Path_, YamlDoc, check
from ccloudvm.core.errors import UsageError
from ccloudvm.workloads.model import WorkloadFile
from ccloudvm.workloads.sources import WorkloadSource


@dataclass(frozen=True)
class ParsedFile:
    """A workload file as written: where it came from, its YAML lines, its fields."""

    src: WorkloadSource
    doc: YamlDoc
    model: WorkloadFile

    def where(self, path: Path_) -> str:
        return self.doc.where(path)

    def line(self, path: Path_) -> int | None:
        return self.doc.line(path)

    def parents(self) -> list[tuple[Path_, str]]:
        """(where, ref) of each parent the file names, in the order it names them."""
        value = self.model.inherits
        if not value:
            return []
        if isinstance(value, str):
            return [(("inherits",), value)]
        return [(("inherits", index), ref) for index, ref in enumerate(value)]


def parse_file(src: WorkloadSource) -> ParsedFile:
    """Parse `src`; a ConfigError lists every problem of the file, one line each."""
    doc = YamlDoc(src.text, src.origin)
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise UsageError(f"{src.origin}: a workload file must be a YAML mapping of fields")
    return ParsedFile(src, doc, check(WorkloadFile, data, doc))
