"""
``get-schema``: the device's YANG modules, through the store's schema cache
(L{callhome.storage.schemas}): only modules no device gave before are
fetched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from callhome.actions import ActionConfigError, ActionContext
from callhome.actions.capabilities import require
from callhome.netconf import operations as ops
from callhome.netconf import xml
from callhome.netconf.session import ReplyTooLarge
from callhome.storage.schemas import yang_problem

_YANG_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class GetSchema:
    """
    ``get-schema: {modules, max_size}``: the YANG modules the device lists in
    ietf-netconf-monitoring (``/netconf-state/schemas``), or only C{modules}.
    With a store, modules are cached by module and revision: only those no
    device gave before are fetched, each saved to
    ``<results_dir>/<device>/schemas/<module>@<revision>.yang`` and to the
    cache; the device's list of modules is recorded either way.  A schema
    that is not YANG text, or over C{max_size} bytes, is not kept (logged).
    """

    name = "get-schema"

    def __init__(self, modules: list[str] | None = None, max_size: int = 16 * 1024 * 1024) -> None:
        if modules is not None and (not isinstance(modules, list) or not all(isinstance(m, str) for m in modules)):
            raise ActionConfigError("must be a list of module names", key="modules")
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
            raise ActionConfigError("must be a number of bytes above 0", key="max_size")
        self.modules = set(modules) if modules else None
        self.max_size = max_size

    async def __call__(self, context: ActionContext) -> list[Path]:
        """List the schemas, then fetch each one the cache lacks."""
        require(context, "monitoring", self.name)
        wanted = _listed_schemas(await context.session.rpc(ops.schemas_filter()), context)
        if self.modules is not None:
            wanted = [(i, v) for i, v in wanted if i in self.modules]
        cached: set[tuple[str, str]] = set()
        if context.schemas is not None:
            if self.modules is None:
                context.schemas.announced(context.device.name, wanted)
            cached = await context.schemas.known(wanted)
        n = "{%s}" % ops.MONITORING_NS
        saved, skipped = [], 0
        for identifier, version in wanted:
            if (identifier, version) in cached:
                continue
            try:
                reply = await context.session.rpc(ops.get_schema(identifier, version or None))
            except ReplyTooLarge as e:
                skipped += 1
                context.log.warn("get-schema: {module}@{revision} from {device} not kept: {problem}",
                                 module=identifier, revision=version or "-", device=context.device.name, problem=e)
                continue
            data = reply.root.find(n + "data")
            if data is None:
                data = reply.root.find(xml.qname("data"))
            text = ((data.text or "") if data is not None else "").encode("utf-8")
            problem = yang_problem(text, self.max_size)
            if problem is not None:
                skipped += 1
                context.log.warn("get-schema: {module}@{revision} from {device} not kept: {problem}",
                                 module=identifier, revision=version or "-", device=context.device.name, problem=problem)
                continue
            name = f"{identifier}@{version}.yang" if version else f"{identifier}.yang"
            saved.append(context.results.save_file(context.device.name, f"schemas/{name}", text, action="get-schema"))
            if context.schemas is not None:
                context.schemas.save(identifier, version, text)
        if self.modules is not None:
            missing = self.modules - {i for i, _ in wanted}
            if missing:
                raise LookupError(f"the device lists no schema for {', '.join(sorted(missing))}")
        context.log.info("get-schema: {device} lists {listed} modules: {fetched} fetched, {cached} cached already, {skipped} not kept",
                         device=context.device.name, listed=len(wanted), fetched=len(saved), cached=len(cached), skipped=skipped)
        return saved


def _listed_schemas(listing: Any, context: ActionContext) -> list[tuple[str, str]]:
    """The YANG (module, revision) pairs a netconf-state/schemas reply lists, invalid names skipped."""
    n = "{%s}" % ops.MONITORING_NS
    wanted: dict[tuple[str, str], None] = {}
    for schema in listing.root.iter(n + "schema"):
        identifier = (schema.findtext(n + "identifier") or "").strip()
        version = (schema.findtext(n + "version") or "").strip()
        fmt = (schema.findtext(n + "format") or "yang").strip()
        if not _YANG_IDENTIFIER.match(identifier) or (version and not _REVISION.match(version)):
            context.log.warn(
                "get-schema: skipping a schema with an invalid name from {device}: {identifier!r}@{version!r}",
                device=context.device.name, identifier=identifier[:80], version=version[:40],
            )
            continue
        if fmt.split(":")[-1] == "yang":
            wanted[(identifier, version)] = None
    return list(wanted)
