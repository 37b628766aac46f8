"""Mesh config files -> `MeshConfig` of typed resources, or a `ConfigError` listing every issue.

Theory of operation: each file is composed (not constructed) document by document, so every node
keeps its line. A document is one object, or a `kind: List` whose `items` are objects; empty
documents are skipped. The object's `kind` (and the group of its `apiVersion`) picks a parser from
`KINDS`; metadata is read here, the rest by the kind's parser. Kinds without a parser are kept as
`GenericResource`s and warned about once, never dropped silently. Issues accumulate across all
files; if any is an error the whole load is refused with all of them, otherwise the warnings
travel with the `MeshConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path

import yaml

from sidecar.config import names
from sidecar.config.nodes import Document, Fields, Node
from sidecar.config.parse_destination_rule import parse_destination_rule
from sidecar.config.parse_gateway import parse_gateway
from sidecar.config.parse_istio import (
    parse_generic,
    parse_service_entry,
    parse_sidecar,
    parse_workload_entry,
)
from sidecar.config.parse_k8s import (
    parse_endpoint_slice,
    parse_endpoints,
    parse_pod,
    parse_service,
    parse_workload,
)
from sidecar.config.parse_virtual_service import parse_virtual_service
from sidecar.config.resources import (
    MeshConfig,
    ObjectMeta,
    OpaqueResource,
    Resource,
    ServiceAccount,
)
from sidecar.errors import ConfigError, ConfigIssue, Severity

DEFAULT_NAMESPACE = "default"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

Parser = Callable[[ObjectMeta, Fields], Resource | None]

_CORE = frozenset({""})
_APPS = frozenset({"apps"})
_ISTIO_NET = frozenset({"networking.istio.io"})
_ISTIO_SEC = frozenset({"security.istio.io"})


def _identity_only(meta: ObjectMeta, root: Fields) -> Resource:
    root.finish(ignore_all=True)
    return ServiceAccount(meta)


def _opaque(meta: ObjectMeta, root: Fields, kind: str) -> Resource:
    root.finish(ignore_all=True)
    return OpaqueResource(meta, kind)


# kind -> (API groups it may come from, parser). None as parser: not implemented yet (warned).
KINDS: Mapping[str, tuple[frozenset[str], Parser | None]] = {
    "Service": (_CORE, parse_service),
    "Endpoints": (_CORE, parse_endpoints),
    "Pod": (_CORE, parse_pod),
    "ServiceAccount": (_CORE, _identity_only),
    "ConfigMap": (_CORE, partial(_opaque, kind="ConfigMap")),
    "Secret": (_CORE, partial(_opaque, kind="Secret")),
    "Namespace": (_CORE, partial(_opaque, kind="Namespace")),
    "EndpointSlice": (frozenset({"discovery.k8s.io"}), parse_endpoint_slice),
    "Deployment": (_APPS, partial(parse_workload, kind="Deployment")),
    "StatefulSet": (_APPS, partial(parse_workload, kind="StatefulSet")),
    "DaemonSet": (_APPS, partial(parse_workload, kind="DaemonSet")),
    "ReplicaSet": (_APPS, partial(parse_workload, kind="ReplicaSet")),
    "WorkloadEntry": (_ISTIO_NET, parse_workload_entry),
    "ServiceEntry": (_ISTIO_NET, parse_service_entry),
    "Sidecar": (_ISTIO_NET, parse_sidecar),
    "VirtualService": (_ISTIO_NET, parse_virtual_service),
    "DestinationRule": (_ISTIO_NET, parse_destination_rule),
    "Gateway": (_ISTIO_NET, parse_gateway),
    "PeerAuthentication": (_ISTIO_SEC, None),
    "AuthorizationPolicy": (_ISTIO_SEC, None),
    "RequestAuthentication": (_ISTIO_SEC, None),
}


# libyaml's composer (same nodes, same marks) when PyYAML was built with it: ~10x faster on
# big configs (10,000 services load in seconds instead of a minute).
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader:
    """One load: issues and objects accumulated over every file and document."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self.objects: list[Resource] = []
        self.seen: dict[tuple[str, str, str], tuple[str, int]] = {}

    def file_issue(self, file: str, line: int | None, reason: str) -> None:
        self.issues.append(ConfigIssue(Severity.ERROR, file, "", "", reason, line))

    def load_text(self, text: str, filename: str) -> None:
        try:
            for root in yaml.compose_all(text, Loader=_YAML_LOADER):
                if root is not None:
                    self.document(Node(root, "", Document(filename, self.issues)))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = None if mark is None else int(mark.line) + 1
            reason = f"YAML syntax error: {exc.problem or exc.context}"
            self.file_issue(filename, line, reason)
        except yaml.YAMLError as exc:
            self.file_issue(filename, None, f"YAML error: {exc}")

    def document(self, node: Node) -> None:
        if node.is_null:
            return
        fields = node.fields()
        if fields is None:
            return
        kind = fields.read_required("kind", Node.string)
        if kind is not None and kind.endswith("List") and "items" in fields.values:
            items = fields.get("items")
            fields.finish(frozenset({"apiVersion", "metadata"}))
            for item in [] if items is None else items.items():
                if not item.is_null:
                    self.document(Node(item.node, "", item.doc))
            return
        api_version = fields.read_required("apiVersion", Node.string)
        meta = self.metadata(fields, kind or "", node.line)
        if kind is None or api_version is None or meta is None:
            fields.finish(ignore_all=True)
            return
        self.typed(node, fields, kind, api_version, meta)

    def typed(
        self, node: Node, fields: Fields, kind: str, api_version: str, meta: ObjectMeta
    ) -> None:
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        groups, parser = KINDS.get(kind, (frozenset(), None))
        known = group in groups
        if not known or parser is None:
            reason = (
                "kind not implemented yet; ignored"
                if known
                else f"unknown kind {kind} (apiVersion {api_version}); ignored"
            )
            node.doc.add(Severity.WARNING, meta.line, "", reason)
            self.add(node.doc, parse_generic(meta, fields, kind, api_version))
            return
        parsed = parser(meta, fields)
        if parsed is not None:
            self.add(node.doc, parsed)

    def metadata(self, fields: Fields, kind: str, line: int) -> ObjectMeta | None:
        node = fields.require("metadata")
        if node is None:
            return None
        meta = node.fields()
        if meta is None:
            return None
        doc = node.doc
        name = meta.read_required("name", names.dns_subdomain)
        namespace = meta.read("namespace", names.dns_label, DEFAULT_NAMESPACE)
        doc.obj = f"{kind}/{namespace}/{name or '?'}"
        labels = names.selector_labels(meta, "labels")
        meta.finish(ignore_all=True)  # annotations, uid, resourceVersion, ...: not the proxy's
        if name is None:
            return None
        return ObjectMeta(name, namespace, labels, doc.file, line)

    def add(self, doc: Document, obj: Resource) -> None:
        key = (obj.kind_name, obj.meta.namespace, obj.meta.name)
        first = self.seen.get(key)
        if first is not None:
            doc.add(
                Severity.ERROR,
                obj.meta.line,
                "metadata.name",
                f"duplicate object (first defined at {first[0]}:{first[1]})",
            )
            return
        self.seen[key] = (obj.meta.file, obj.meta.line)
        self.objects.append(obj)

    def result(self) -> MeshConfig:
        """The config, or ConfigError; issues in file order, then line order."""
        files: dict[str, int] = {}
        for issue in self.issues:
            files.setdefault(issue.file, len(files))
        issues = sorted(self.issues, key=lambda i: (files[i.file], i.line or 0))
        if any(i.severity is Severity.ERROR for i in issues):
            raise ConfigError(issues)
        return MeshConfig(tuple(self.objects), tuple(issues))


def load_text(text: str, filename: str = "<string>") -> MeshConfig:
    """Load one file's text; raise `ConfigError` with every issue if any is an error."""
    loader = _Loader()
    loader.load_text(text, filename)
    return loader.result()


def config_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to load: each path itself, or a directory's YAML/JSON files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in CONFIG_SUFFIXES))
        else:
            out.append(p)
    return out


def load_paths(paths: Iterable[str | Path]) -> MeshConfig:
    """Load every file (directories: their YAML/JSON files) into one `MeshConfig`."""
    loader = _Loader()
    for path in config_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            loader.file_issue(str(path), None, f"cannot read: {exc}")
            continue
        loader.load_text(text, str(path))
    return loader.result()
